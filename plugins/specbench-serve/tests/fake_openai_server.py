"""A stand-in OpenAI-compatible server for the server method's tests: /v1/models,
/v1/completions and /v1/chat/completions (streamed), /metrics (vLLM's speculative
counters), and the faults a real one shows, chosen by flags.

Output tokens are a deterministic function of the prompt, so two servers started alike
answer alike (a plain and a "speculative" one). Tokens go out one per chunk, or ``--burst``
per chunk; with ``return_token_ids`` in the request each chunk carries its ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--token-delay", type=float, default=0.002, help="seconds per chunk")
parser.add_argument("--first-delay", type=float, default=0.0, help="seconds before chunk 1")
parser.add_argument("--burst", type=int, default=1, help="tokens per chunk")
parser.add_argument("--spec", type=int, default=0, help="draft length: count drafts")
parser.add_argument("--status", type=int, default=200, help="answer every request so")
parser.add_argument("--cut-after", type=int, default=0, help="close after N chunks")
parser.add_argument("--die-after", type=int, default=0, help="exit during request N + 1")
parser.add_argument("--fail-from", type=int, default=0, help="faults from request N on")
parser.add_argument("--reject-ids", action="store_true", help="400 for token-id prompts")
parser.add_argument("--no-metrics", action="store_true")
parser.add_argument("--no-usage", action="store_true")
args = parser.parse_args()

LOCK = threading.Lock()
STATE: dict[str, Any] = {
    "drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * max(args.spec, 1),
    "in_flight": 0, "max_in_flight": 0, "done": 0, "bodies": [],
}  # fmt: skip


def output_ids(prompt: Any, count: int) -> list[int]:
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        seed = sum(prompt)
    else:
        seed = sum(map(ord, json.dumps(prompt)))
    return [10 + (seed * 7 + 3 * i) % 40 for i in range(count)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a: object) -> None:
        pass

    def _json(self, code: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake-model"}]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/debug/bodies":
            self._json(200, STATE["bodies"])
        elif self.path == "/debug/state":
            self._json(200, {k: v for k, v in STATE.items() if k != "bodies"})
        elif self.path == "/metrics" and not args.no_metrics:
            lines = []
            for name in ("drafts", "draft_tokens", "accepted"):
                metric = {"drafts": "num_drafts", "draft_tokens": "num_draft_tokens",
                          "accepted": "num_accepted_tokens"}[name]  # fmt: skip
                lines += [f"# TYPE vllm:spec_decode_{metric} counter",
                          f'vllm:spec_decode_{metric}_total{{model_name="fake"}} {STATE[name]}']  # fmt: skip
            lines.append("# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter")
            for i, value in enumerate(STATE["per_pos"]):
                lines.append(
                    f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="fake",'
                    f'position="{i}"}} {value}'
                )
            text = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with LOCK:
            STATE["bodies"].append(body)
            faulty = len(STATE["bodies"]) > args.fail_from
        if args.status != 200 and faulty:
            self._json(args.status, {"error": {"message": f"fake failure {args.status}"}})
            return
        chat = self.path.endswith("/chat/completions")
        prompt = body.get("messages") if chat else body.get("prompt")
        if args.reject_ids and isinstance(prompt, list) and not chat:
            self._json(400, {"error": {"message": "prompt must be a string"}})
            return
        count = int(body.get("max_tokens", 16))
        ids = output_ids(prompt, count)
        with LOCK:
            STATE["in_flight"] += 1
            STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
            number = STATE["done"]
        try:
            self._stream(body, ids, chat, number, faulty)
        finally:
            with LOCK:
                STATE["in_flight"] -= 1
                STATE["done"] += 1

    def _stream(
        self, body: dict[str, Any], ids: list[int], chat: bool, number: int, faulty: bool
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if faulty:
            time.sleep(args.first_delay)
        chunks = [ids[i : i + args.burst] for i in range(0, len(ids), args.burst)]
        for index, chunk in enumerate(chunks):
            if args.die_after and number >= args.die_after and index == 1:
                os._exit(3)  # the server dies mid-answer
            if faulty and args.cut_after and index == args.cut_after:
                self.wfile.flush()
                return  # the connection closes with no finish_reason
            time.sleep(args.token_delay)
            text = "".join(f" t{t}" for t in chunk)
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = {"content": text}
            else:
                choice["text"] = text
            if body.get("return_token_ids"):
                choice["token_ids"] = chunk
            self._event({"choices": [choice]})
        final: dict[str, Any] = {"choices": [{"index": 0, "finish_reason": "length",
                                               "text": ""}]}  # fmt: skip
        if not args.no_usage:
            final["usage"] = {"completion_tokens": len(ids), "prompt_tokens": 3}
        self._event(final)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        if args.spec:
            with LOCK:
                steps = len(ids) // (args.spec + 1)
                STATE["drafts"] += steps
                STATE["draft_tokens"] += steps * args.spec
                STATE["accepted"] += steps * args.spec - steps // 2
                for i in range(args.spec):
                    STATE["per_pos"][i] += steps - (steps // 2 if i == args.spec - 1 else 0)

    def _event(self, value: Any) -> None:
        self.wfile.write(f"data: {json.dumps(value)}\n\n".encode())
        self.wfile.flush()


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
print(f"fake openai server on {args.port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
