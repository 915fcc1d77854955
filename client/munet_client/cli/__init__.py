"""`munet`: the command line for munet-server. Tables for people, `--json` for scripts.

munet add-task flowers data/flowers        # ImageFolder tree; progress bars for upload and search
munet predict flowers rose.jpg tulip.png --top-k 3
munet predict flowers,colours rose.jpg      # several tasks, one pass through their shared layers
munet predict flowers photos/ --csv out.csv # a whole folder; a bad image is reported by name
munet eval flowers test/                    # accuracy, per-class precision/recall, confusion matrix
munet export flowers model/ | munet verify  # standalone ONNX; outputs still bit-identical?
munet tasks | munet describe flowers | munet delete flowers
munet improve flowers                       # search again with what later tasks added: a new version if better
munet versions flowers | munet set-version flowers 1 | munet delete-version flowers 2
munet predict flowers@1 rose.jpg            # a stored version, pinned
munet snapshot system.tar | munet restore system.tar
munet ops | munet wait OP | munet cancel OP
"""

from munet_client.cli.main import main, parser

__all__ = ["main", "parser"]
