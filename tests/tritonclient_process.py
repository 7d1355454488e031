"""Run a tritonclient script in a child interpreter and get its result back as JSON.

tritonclient registers Triton's ``inference.*`` messages in protobuf's default descriptor pool, as our
generated protos.inference does; one process cannot hold both ("duplicate symbol"). So tritonclient is never
imported into the pytest process: a test hands a script to ``run_tritonclient``, which runs it with this
interpreter and the worktree first on the path. The script sees its keyword arguments as the dict
``inputs`` (JSON values; bytes travel base64-encoded, see ``b64``) and assigns a JSON-serializable
``result``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 120.0

# What the child runs: read {"script", "inputs"} from stdin, execute the script, write its result to
# stdout (anything the script prints goes to stderr, so it cannot garble the JSON).
_RUNNER = """
import json, sys
job = json.load(sys.stdin)
out, sys.stdout = sys.stdout, sys.stderr
namespace = {"__name__": "tritonclient_script", "inputs": job["inputs"]}
exec(compile(job["script"], "<tritonclient script>", "exec"), namespace)
json.dump(namespace["result"], out)
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def run_tritonclient(script: str, **inputs: Any) -> Any:
    """``script``'s ``result``; AssertionError with the child's stderr when the script fails."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    completed = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps({"script": script, "inputs": inputs}),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise AssertionError(f"tritonclient script failed (exit {completed.returncode}):\n{completed.stderr}")
    return json.loads(completed.stdout)
