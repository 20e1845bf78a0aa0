"""A webhook receiver on loopback for the tests of what kale-pool posts to the operator's
webhook (the pool's alert engine, the wallet's payout policy)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

# The webhook URL's own secret: no post may carry it.
TOKEN = "hooktoken0123456789abcdefSECRET"


class Receiver:
    """A webhook on 127.0.0.1: records each JSON body; answers 500 to the first `fail`."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if received.fail > 0:
                    received.fail -= 1
                    self.send_response(500)
                else:
                    received.posts.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/api/webhooks/{TOKEN}"

    def texts(self, rule: str) -> list[str]:
        """The posted texts about `rule`; every post carries both keys, alike."""
        for post in self.posts:
            assert post["content"] == post["text"]
            assert TOKEN not in post["text"]
        return [p["text"] for p in self.posts if f" {rule}: " in p["text"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
