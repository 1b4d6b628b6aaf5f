"""Hold a stage open until stdin closes (a live owner for lock tests).

usage: hold_stage.py CHECKPOINT_DIR STAGE
"""

from __future__ import annotations

import sys

from scrapy_checkpoint import EnhancedCheckpoint

cp = EnhancedCheckpoint(sys.argv[1], sys.argv[2], log_every=0)
cp.start(total_items=10)
cp.update(processed=1, successful=1, index=0)
cp.save(force=True)
print("ready", flush=True)
sys.stdin.read()
cp.complete()
cp.close()
