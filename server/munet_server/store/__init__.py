"""Persistence: LMDB metadata records + content-addressed safetensors shards, in atomic generations.

Protobuf-free and model-agnostic: it stores dataclass records (`records.py`) and plain
`dict[str, torch.Tensor]`; the engine decides what they mean.

On-disk layout of a store root (`--store DIR`)::

    CURRENT                     one line, "gen-<id>": the live generation (temp + fsync + rename)
    LOCK                        fcntl lock held by the one process serving this store
    gen-<id>/meta.lmdb/         LMDB env; named DBs system, components, tasks, datasets, examples, jobs
    gen-<id>/shards/<sha256>.safetensors
                                immutable tensor files named by the sha256 of their bytes
    gen-<id>/manifest.json      in a restored generation: the manifest it was restored from
    staging-<id>/, staging-<id>.tar
                                a generation being built (restore) or a snapshot being streamed
    CURRENT.tmp-<id>, gen-<id>/shards/.tmp-<id>
                                files being written; never read

Guarantees under kill -9 (or power loss: every publish is fsync'd file, rename, fsync'd dir):

* Writing a shard: before the rename only a `.tmp-*` file exists; after it, a complete shard.
  Either way no record references it yet. Start-up `gc` removes temp files and unreferenced shards.
* `Store.commit_task`: (1) one shard with all new tensors, (2) one LMDB transaction publishing the
  components and the task. Killed before (2) commits: the task does not exist, the orphan shard is
  collected. After: the task is complete. A task is never half there.
* Any `meta.write()` block is one LMDB transaction: all or nothing.
* Restore: the new generation is built and verified in `staging-*`, renamed to `gen-<new>` and only
  then named by CURRENT. Killed before the CURRENT rename: the old generation is live and the
  leftovers are removed by `gc`. After: the new one is live and `gc` removes the old one.
  CURRENT therefore always names a complete generation.
* Snapshots are written to a temp dir and renamed into place: a snapshot dir either has its
  manifest and every file it lists, or does not exist under its final name.

Integrity: every shard read is checked against its digest (`CorruptShard`); a restore checks the
manifest's sha256 and size of every file, refuses unlisted files, links and path tricks, validates
each shard's safetensors header against its size, and every record's cross-references.
Nothing is ever unpickled. Snapshot shards are hard links to the live files when on the same
filesystem: never edit snapshot files in place.

Concurrency: one process per store (LOCK). Inside it, LMDB gives readers consistent views without
blocking; `Store` serialises commit, delete, gc, snapshot and restore with one lock.
"""
