"""A stand-in for llama-server with the same HTTP surface (/health, /props, /metrics,
/completion), for tests that must not need the real build. Tokens are a deterministic
function of the prompt; with --spec-type it reports speculative counters as llama-server
does (cumulative, in /metrics) and per request (timings.draft_n, draft_n_accepted)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--host")
parser.add_argument("--spec-type")
parser.add_argument("--exit-at-start", action="store_true")
parser.add_argument("--slow-start", type=float, default=0.0)
args, _ = parser.parse_known_args()
print("fake llama-server", " ".join(sys.argv[1:]), flush=True)
if args.exit_at_start:
    print("error: failed to load model 'nothing.gguf'", flush=True)
    sys.exit(1)
STARTED = time.monotonic() + args.slow_start
COUNTERS = {"n_decode_total": 0, "drafts": 0, "draft_tokens": 0, "accepted": 0, "pos0": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def _send(self, code: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            ok = time.monotonic() >= STARTED
            self._send(200 if ok else 503, json.dumps({"status": "ok" if ok else "loading"}))
        elif self.path == "/props":
            self._send(200, json.dumps({"build_info": "b9999-fake"}))
        elif self.path == "/metrics":
            c = COUNTERS
            lines = [
                f"llamacpp:n_decode_total {c['n_decode_total']}",
                f"llamacpp:spec_decode_num_drafts_total {c['drafts']}",
                f"llamacpp:spec_decode_num_draft_tokens_total {c['draft_tokens']}",
                f"llamacpp:spec_decode_num_accepted_tokens_total {c['accepted']}",
            ]
            if c["drafts"]:
                lines.append(
                    f'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="0"}} '
                    f"{c['pos0']}"
                )
            self._send(200, "\n".join(lines) + "\n", "text/plain")
        else:
            self._send(404, "{}")

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/completion":
            self._send(404, "{}")
            return
        prompt = payload["prompt"]
        if not all(isinstance(t, int) for t in prompt):
            self._send(400, json.dumps({"error": "prompt must be token ids here"}))
            return
        token, tokens = prompt[-1], []
        for _ in range(payload["n_predict"]):
            token = (token * 7 + 3) % 50 + 1
            tokens.append(token)
        if 2 in tokens:  # id 2 ends the sequence in the tests' tokenizer
            tokens = tokens[: tokens.index(2) + 1]
        drafts = accepted = 0
        if args.spec_type:
            drafts, accepted = len(tokens) // 3, len(tokens) // 3
        COUNTERS["n_decode_total"] += len(tokens) - accepted
        COUNTERS["drafts"] += drafts
        COUNTERS["draft_tokens"] += 2 * drafts
        COUNTERS["accepted"] += accepted
        COUNTERS["pos0"] += accepted
        timings = {"prompt_n": len(prompt), "prompt_ms": 1.0, "predicted_ms": 2.0}
        if drafts:
            timings |= {"draft_n": 2 * drafts, "draft_n_accepted": accepted}
        stop = "eos" if tokens and tokens[-1] == 2 else "limit"
        self._send(200, json.dumps({"tokens": tokens, "stop_type": stop, "timings": timings}))


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
