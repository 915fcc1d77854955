"""The HTTP door fuzzed from its own OpenAPI description (issue 31): requests generated for every route,
with the admin token, the predict token and none. Each gets an answer (no hang) that is not a server
error, in the one error shape, and the served task answers as before."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from munet_client import MunetClient
from munet_server.data.images import encode_png
from munet_server.ingest.limits import UploadLimits
from tests.helpers import image_folder, make_app

TOKENS = {"admin": "Bearer adm", "predict": "Bearer pre", "none": None}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("fuzz-http")
    limits = UploadLimits(idle_seconds=5.0)
    app = make_app(tmp / "store", tiny_vit, http_port=0, admin_token="adm", predict_token="pre", upload=limits)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60, token="adm")
    folder, test = image_folder(tmp, classes=2, per_class=10)
    assert client.wait(client.add_task_from_folder("base", folder, budget={"generations": 0}).name, timeout=300).state == "SUCCEEDED"
    pngs = [encode_png(i) for i in test.images[:4]]
    golden = client.predict("base", pngs, top_k=2)
    yield app
    assert client.predict("base", pngs, top_k=2) == golden
    assert [t.name for t in client.list_tasks()] == ["base"]
    client.close()
    app.stop(0)


def test_no_route_answers_a_server_error(server):
    base = f"http://127.0.0.1:{server.http_port}"
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20  # every route is described, so every route is fuzzed

    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def answers(case):
            if case.path_parameters and case.path_parameters.get("task") == "base" and case.method != "GET":
                case.path_parameters["task"] = "not-base"  # others may change, never the task checked after
            for token in TOKENS.values():
                response = case.call(base_url=base, headers={"Authorization": token} if token else {}, timeout=60)
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
                if response.status_code >= 400:
                    body = response.json()
                    assert set(body) == {"error", "code"} and body["error"], body

        answers()
