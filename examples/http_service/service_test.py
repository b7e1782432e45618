#!/usr/bin/env python3
"""Runs example_http_service on a free port of 127.0.0.1 and checks it from the outside.

  service_test.py [--scenario main|overload] [--promtool PATH] <example_http_service>

main: 500 dynamic events, 100 typed orders and requests that must be refused (invalid JSON, not
an object, unsupported values, invalid orders, bodies over the limit, unknown routes, a sixth
projection beyond --max-projections 5); checks the status codes, then /metrics until
everything accepted is handled (published == handled == accepted, refusals by reason == what
was sent, what the handlers counted), the exposition format (promtool check metrics, when
given), and that SIGTERM ends the service with exit status 0 and a final line reporting
everything accepted handled.

overload: a ring of 8 with one worker whose handlers sleep 20 ms, hit by 8 concurrent clients:
every answer must be 202 or 503 (with Retry-After), published must equal the 202s and
http_requests_rejected_total{reason="buffer_full"} the 503s, and everything accepted handled.

Python 3 standard library only. Everything is bounded in time; the service is always killed.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
DEADLINE = time.monotonic() + 100  # ctest's TIMEOUT is 120 s


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def remaining(limit):
    return max(0.1, min(limit, DEADLINE - time.monotonic()))


class Service:
    def __init__(self, binary, args):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        # Only read by ThreadSanitizer builds (see tsan.supp).
        suppressions = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tsan.supp")
        env["TSAN_OPTIONS"] = (env.get("TSAN_OPTIONS", "") + f" suppressions={suppressions}").strip()
        self.proc = subprocess.Popen([binary, "--port", "0"] + args, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)
        self.lines = []
        self.first_line = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        check(self.first_line.wait(remaining(30)), "the service printed nothing within 30 s")
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", self.lines[0] if self.lines else "")
        check(match is not None, f"unexpected first line: {self.lines[:1]!r}")
        self.port = int(match.group(1))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.first_line.set()
        self.first_line.set()

    def stop(self, timeout=30):
        """SIGTERM, then waits for the exit; returns (exit status, last stdout line)."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(remaining(timeout))
        self.reader.join(remaining(5))
        return status, (self.lines[-1] if self.lines else "")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read()


class Client:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, fresh=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            if self.conn is None or fresh:
                self.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=remaining(10))
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, dict(response.getheaders()), data
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.BadStatusLine):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text):
    """{(name, frozenset of (label, value)): float} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        check(match is not None, f"not a Prometheus sample line: {line!r}")
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    check(key in samples, f"no sample {name}{labels}")
    return samples[key]


def scrape(client):
    status, headers, body = client.request("GET", "/metrics")
    check(status == 200, f"/metrics answered {status}")
    content_type = headers.get("Content-Type", "")
    check(content_type == "text/plain; version=0.0.4", f"/metrics Content-Type {content_type!r}")
    return body.decode(), parse_metrics(body.decode())


def wait_handled(client, expected, limit=20):
    """Polls /metrics until the store has handled `expected` events (bounded)."""
    end = time.monotonic() + limit
    while True:
        text, samples = scrape(client)
        handled = value(samples, "eventbus_events_handled_total", store="events")
        if handled >= expected or time.monotonic() > end or time.monotonic() > DEADLINE:
            return text, samples
        time.sleep(0.05)


def final_counts(line):
    check(line.startswith("handled: "), f"unexpected final line {line!r}")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def promtool_check(promtool, text):
    if not promtool:
        return
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=remaining(30))
    check(result.returncode == 0,
          f"promtool check metrics failed:\n{result.stdout}{result.stderr}")


REASONS = ["invalid_json", "not_object", "unsupported_value", "invalid_order",
           "too_many_projections", "too_large", "not_found", "bad_request", "buffer_full",
           "closed"]


def scenario_main(binary, promtool):
    service = Service(binary, ["--workers", "2", "--capacity", "1024", "--max-projections", "5"])
    try:
        client = Client(service.port)
        status, _, body = client.request("GET", "/healthz")
        check(status == 200 and body == b"ok", f"/healthz: {status} {body!r}")

        projections = ["user_created", "page_viewed", "item.added", "cart-emptied", "Login2"]
        per_projection = {p: 0 for p in projections}
        arguments = {p: 0 for p in projections}
        for i in range(500):
            projection = projections[i % len(projections)]
            event = {"user": f"u{i}", "count": i, "ratio": i / 7, "vip": i % 2 == 0}
            if i % 3 == 0:
                event["id"] = f"evt-given-{i}"
            elif i % 3 == 1:
                event["id"] = i  # not a string: kept as an argument, the id is generated
            status, _, body = client.request("POST", f"/events/{projection}", event)
            check(status == 202, f"event {i}: {status} {body!r}")
            answer = json.loads(body)
            check(answer.get("accepted") is True, f"event {i}: {answer!r}")
            if i % 3 == 0:
                check(answer.get("id") == f"evt-given-{i}", f"event {i}: id {answer!r}")
            per_projection[projection] += 1
            arguments[projection] += len(event)

        cents = 0
        for i in range(100):
            status, _, body = client.request("POST", "/orders",
                                             {"id": f"order-{i}", "amount_cents": 100 + i})
            check(status == 202 and json.loads(body).get("accepted") is True,
                  f"order {i}: {status} {body!r}")
            cents += 100 + i

        for i in range(5):  # the baseline answers like /events but publishes nothing
            status, _, body = client.request("POST", "/baseline", {"user": f"b{i}", "n": i})
            check(status == 202, f"baseline {i}: {status} {body!r}")

        expected = {reason: 0 for reason in REASONS}
        bad = [
            ("POST", "/events/user_created", "{not json", 400, "invalid_json"),
            ("POST", "/events/user_created", "", 400, "invalid_json"),
            ("POST", "/orders", '{"id": "x", ', 400, "invalid_json"),
            ("POST", "/events/user_created", "[1, 2]", 400, "not_object"),
            ("POST", "/events/user_created", "42", 400, "not_object"),
            ("POST", "/events/user_created", '"text"', 400, "not_object"),
            ("POST", "/events/user_created", '{"a": {"b": 1}}', 400, "unsupported_value"),
            ("POST", "/events/user_created", '{"a": [1]}', 400, "unsupported_value"),
            ("POST", "/events/user_created", '{"a": null}', 400, "unsupported_value"),
            ("POST", "/events/user_created", '{"a": 18446744073709551615}', 400,
             "unsupported_value"),
            ("POST", "/orders", '{"id": "o", "amount_cents": "12"}', 400, "invalid_order"),
            ("POST", "/orders", '{"amount_cents": 12}', 400, "invalid_order"),
            ("POST", "/orders", '{"id": "", "amount_cents": 12}', 400, "invalid_order"),
            ("POST", "/events/user_created", '{"pad": "' + "x" * 70000 + '"}', 413,
             "too_large"),
            ("POST", "/orders", " " * (64 * 1024 + 1), 413, "too_large"),
            ("GET", "/nope", None, 404, "not_found"),
            ("POST", "/events/", "{}", 404, "not_found"),
            ("POST", "/events/bad%20name", "{}", 404, "not_found"),
            ("GET", "/events/user_created", None, 404, "not_found"),
            ("POST", "/events/a_sixth_projection", "{}", 400, "too_many_projections"),
        ]
        for method, path, body, want, reason in bad:
            status, _, answer = client.request(method, path, body, fresh=True)
            check(status == want, f"{method} {path} ({reason}): {status}, want {want}")
            check(json.loads(answer).get("error") == reason,
                  f"{method} {path}: body {answer!r}, want error {reason!r}")
            expected[reason] += 1

        accepted = 600
        text, samples = wait_handled(client, accepted)
        promtool_check(promtool, text)
        for name, want in [("eventbus_events_published_total", accepted),
                           ("eventbus_events_handled_total", accepted),
                           ("eventbus_handler_calls_total", accepted),
                           ("eventbus_handler_errors_total", 0),
                           ("eventbus_events_unhandled_total", 0)]:
            got = value(samples, name, store="events")
            check(got == want, f"{name}{{store=\"events\"}} = {got}, want {want}")
        for reason in REASONS:
            got = value(samples, "http_requests_rejected_total", reason=reason)
            check(got == expected[reason],
                  f'http_requests_rejected_total{{reason="{reason}"}} = {got}, '
                  f"want {expected[reason]}")
        for route, want in [("events", 500), ("orders", 100), ("baseline", 5)]:
            got = value(samples, "http_requests_accepted_total", route=route)
            check(got == want, f"accepted on {route}: {got}, want {want}")
        for projection in projections:
            got = value(samples, "service_projection_events_total", projection=projection)
            check(got == per_projection[projection], f"{projection}: {got} events handled")
            got = value(samples, "service_projection_arguments_total", projection=projection)
            check(got == arguments[projection], f"{projection}: {got} arguments counted")
        check(value(samples, "service_orders_handled_total") == 100, "orders handled")
        got = value(samples, "service_order_amount_cents_total")
        check(got == cents, f"order amounts: {got}, want {cents}")
        client.close()

        status, line = service.stop()
        check(status == 0, f"exit status {status} after SIGTERM; stderr:\n{service.stderr_text()}")
        counts = final_counts(line)
        for key, want in [("accepted", accepted), ("published", accepted), ("handled", accepted),
                          ("unhandled", 0), ("errors", 0),
                          ("rejected", sum(expected.values()))]:
            check(counts.get(key) == want, f"final line: {key}={counts.get(key)}, want {want}")
        print(f"main: {accepted} accepted and handled, {sum(expected.values())} refused; {line}")
    except Exception:
        service.kill()
        sys.stderr.write("---- service stderr ----\n" + service.stderr_text()[-8000:])
        raise
    finally:
        service.kill()


def scenario_overload(binary, promtool):
    service = Service(binary, ["--capacity", "8", "--workers", "1", "--handler-delay-us",
                               "20000", "--http-threads", "8"])
    try:
        statuses = []
        errors = []
        lock = threading.Lock()

        def burst(worker):
            client = Client(service.port)
            try:
                for i in range(25):
                    path = "/orders" if i % 5 == 0 else "/events/burst"
                    body = ({"id": f"o{worker}-{i}", "amount_cents": 1} if i % 5 == 0
                            else {"n": i})
                    status, headers, answer = client.request("POST", path, body)
                    with lock:
                        statuses.append(status)
                    if status == 503:
                        check(headers.get("Retry-After") == "1", f"503 without Retry-After")
                        check(json.loads(answer).get("error") == "buffer_full",
                              f"503 body {answer!r}")
                    else:
                        check(status == 202, f"{path}: {status} {answer!r}")
            except Exception as e:  # reported by the main thread
                with lock:
                    errors.append(f"client {worker}: {e!r}")
            finally:
                client.close()

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(remaining(60))
        check(not errors, "; ".join(errors))
        check(len(statuses) == 200, f"{len(statuses)} answers, want 200")
        ok = statuses.count(202)
        full = statuses.count(503)
        check(ok + full == 200, f"answers other than 202 and 503: {sorted(set(statuses))}")
        check(full > 0, "no 503: the ring never filled")
        check(ok >= 8, f"only {ok} requests accepted")

        client = Client(service.port)
        text, samples = wait_handled(client, ok)
        promtool_check(promtool, text)
        published = value(samples, "eventbus_events_published_total", store="events")
        handled = value(samples, "eventbus_events_handled_total", store="events")
        check(published == ok, f"published {published}, but {ok} answers were 202")
        check(handled == ok, f"handled {handled}, want {ok}")
        got = value(samples, "http_requests_rejected_total", reason="buffer_full")
        check(got == full, f"buffer_full refusals {got}, but {full} answers were 503")
        client.close()

        status, line = service.stop()
        check(status == 0, f"exit status {status} after SIGTERM; stderr:\n{service.stderr_text()}")
        counts = final_counts(line)
        check(counts.get("accepted") == ok and counts.get("handled") == ok,
              f"final line {line!r}, want accepted=handled={ok}")
        check(counts.get("rejected_buffer_full") == full, f"final line {line!r}")
        print(f"overload: {ok} accepted (202), {full} refused (503); {line}")
    except Exception:
        service.kill()
        sys.stderr.write("---- service stderr ----\n" + service.stderr_text()[-8000:])
        raise
    finally:
        service.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["main", "overload"], default="main")
    parser.add_argument("--promtool")
    parser.add_argument("binary")
    args = parser.parse_args()
    run = scenario_main if args.scenario == "main" else scenario_overload
    try:
        run(args.binary, args.promtool)
    except (Failure, OSError, subprocess.TimeoutExpired, http.client.HTTPException) as e:
        print(f"FAIL ({args.scenario}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
