"""bench/quality.py against a small WebUI-like HTTP server written here (PNG images with a score in a
tEXt chunk, infotext in `info`), with a deterministic stand-in scorer; statistics checked by hand."""

from __future__ import annotations

import base64
import http.server
import io
import json
import math
import os
import struct
import sys
import threading
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import quality  # noqa: E402

PROMPTS = ["a cat", "a dog"]


def _png(score: float) -> bytes:
    """A 2x2 RGB PNG carrying `score` in a tEXt chunk (what the stand-in scorer reads back)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([40, 80, 120] * 2) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"score\x00" + repr(score).encode()) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def standin_score(items):
    """Deterministic scorer: the value the server wrote into the image."""
    out = []
    for path, _prompt in items:
        with open(path, "rb") as handle:
            data = handle.read()
        start = data.index(b"tEXtscore\x00") + len(b"tEXtscore\x00")
        out.append(float(data[start:data.index(b"IDAT") - 8].decode()))
    return out


def expected_score(prompt: str, seed: int, scale: float | None) -> float:
    """seed, plus the ASAG scale, except that ASAG loses on ('a dog', seed 0)."""
    if scale is None:
        return float(seed)
    return seed + (-scale if (prompt, seed) == ("a dog", 0) else scale)


class FakeWebUI:
    """Answers /sdapi/v1/scripts and /sdapi/v1/txt2img like the WebUI; `mode` injects failures."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/sdapi/v1/scripts":
                    names = ["x/y/z plot"] + ([] if outer.mode == "no-asag" else ["asag"])
                    return self._send(200, {"txt2img": names, "img2img": names})
                return self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                if self.path != "/sdapi/v1/txt2img" or outer.mode == "no-api":
                    return self._send(404, {"detail": "Not Found"})
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.mode == "dies" and outer.requests:
                    return self._send(500, {"error": "CUDA out of memory"})
                outer.requests.append(payload)
                asag = payload.get("alwayson_scripts", {}).get("ASAG", {}).get("args", [None])[0]
                scale = float(asag.get("scale", 1.5)) if asag else None
                info = f"{payload['prompt']}\nSteps: {payload['steps']}, Seed: {payload['seed']}"
                if asag and outer.mode == "asag-error":
                    info += ', ASAG error: "ASAG API: invalid value for \'layers\'"'
                elif asag:
                    info += f", ASAG scale: {scale:g}"
                image = base64.b64encode(_png(expected_score(payload["prompt"], payload["seed"], scale))).decode()
                return self._send(200, {"images": [image], "parameters": payload,
                                        "info": json.dumps({"infotexts": [info], "seed": payload["seed"]})})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webui():
    servers = []

    def make(mode="ok"):
        server = FakeWebUI(mode)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n" + "\n".join(PROMPTS) + "\n\n")
    return str(path)


def _run(tmp_path, prompt_file, urls, *extra):
    argv = ["--out", str(tmp_path / "out"), "--prompts", prompt_file, "--seeds", "0-2", "--width", "64",
            "--height", "64", "--steps", "4", "--metrics", "", "--scorer", "test_quality:standin_score",
            "--config", "off", "--config", "asag:1.5"] + [x for url in urls for x in ("--url", url)] + list(extra)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        return quality.main(argv, stream=io.StringIO())
    finally:
        sys.path.pop(0)


# ------------------------------------------------------------------------------------------------
# statistics by hand


def test_t_quantiles_match_the_table():
    for df, value in ((1, 12.7062), (4, 2.7764), (5, 2.5706), (10, 2.2281), (30, 2.0423)):
        assert math.isclose(quality.t_quantile(0.975, df), value, abs_tol=2e-4), df


def test_mean_ci_and_win_rate_by_hand():
    mean, ci = quality.mean_ci([0, 1, 2, 0, 1, 2])
    # sd = sqrt(0.8) = 0.894427, t(0.975, 5) = 2.570582, sqrt(6) = 2.449490
    assert mean == 1.0 and math.isclose(ci, 2.570582 * 0.894427 / 2.449490, rel_tol=1e-5)
    assert math.isnan(quality.mean_ci([3.0])[1])
    rate, pairs = quality.win_rate({1: 2.0, 2: 1.0, 3: 5.0, 4: 0.0}, {1: 1.0, 2: 1.0, 3: 6.0, 9: 0.0})
    assert (rate, pairs) == ((1 + 0.5 + 0) / 3, 3)  # a win, a tie, a loss; key 4 has no partner


def test_end_to_end_table_against_hand_computed_values(tmp_path, prompt_file, webui):
    server = webui()
    summary = _run(tmp_path, prompt_file, [server.url])
    assert len(server.requests) == 12  # 2 configurations x 2 prompts x 3 seeds
    off, asag = summary["standin_score"]["off"], summary["standin_score"]["asag:1.5"]
    assert off["mean"] == 1.0 and off["n"] == 6 and "win_rate" not in off
    assert math.isclose(off["ci95"], 2.570582 * 0.894427 / 2.449490, rel_tol=1e-5)
    # asag: 1.5, 2.5, 3.5 (cat) and -1.5, 2.5, 3.5 (dog): mean 2, sd sqrt(3.5) = 1.870829
    assert asag["mean"] == 2.0
    assert math.isclose(asag["ci95"], 2.570582 * 1.870829 / 2.449490, rel_tol=1e-5)
    assert math.isclose(asag["win_rate"], 5 / 6) and asag["pairs"] == 6
    out = tmp_path / "out"
    assert sorted(os.listdir(out / "asag_1.5")) == [f"{p:04d}-{s}.png" for p in range(2) for s in range(3)]
    table = (out / "results.md").read_text()
    assert "| standin_score | asag:1.5 | 2 ± 1.96 | 6 | 83.3 % of 6 |" in table
    asag_request = next(r for r in server.requests if "alwayson_scripts" in r)
    assert asag_request["alwayson_scripts"] == {"ASAG": {"args": [{"enabled": True, "scale": 1.5}]}}
    assert asag_request["width"] == 64 and asag_request["steps"] == 4 and asag_request["batch_size"] == 1
    assert sum("alwayson_scripts" not in r for r in server.requests) == 6  # 'off' sends no ASAG at all


def test_resume_skips_existing_images_and_reuses_scores(tmp_path, prompt_file, webui):
    server = webui()
    _run(tmp_path, prompt_file, [server.url])
    _run(tmp_path, prompt_file, [server.url])
    assert len(server.requests) == 12
    os.remove(tmp_path / "out" / "off" / "0001-2.png")
    summary = _run(tmp_path, prompt_file, [server.url])
    assert len(server.requests) == 13 and summary["standin_score"]["off"]["n"] == 6
    with pytest.raises(quality.QualityError, match=r"other settings.*steps"):
        _run(tmp_path, prompt_file, [server.url], "--steps", "5")


def test_jobs_are_spread_and_a_failed_servers_jobs_go_to_the_others(tmp_path, prompt_file, webui):
    good, bad = webui(), webui("dies")
    summary = _run(tmp_path, prompt_file, [bad.url, good.url])
    assert len(good.requests) + len(bad.requests) == 12  # each job done once
    assert len(bad.requests) <= 1 and summary["standin_score"]["asag:1.5"]["n"] == 6
    both_a, both_b = webui(), webui()
    _run(tmp_path / "two", prompt_file, [both_a.url, both_b.url])
    assert len(both_a.requests) + len(both_b.requests) == 12
    keys = [(r["prompt"], r["seed"], "alwayson_scripts" in r) for r in both_a.requests + both_b.requests]
    assert len(set(keys)) == 12


# ------------------------------------------------------------------------------------------------
# errors


def test_clear_errors(tmp_path, prompt_file, webui):
    with pytest.raises(quality.QualityError, match=r"no WebUI reachable.*--api"):
        _run(tmp_path / "a", prompt_file, ["http://127.0.0.1:9"])
    with pytest.raises(quality.QualityError, match="has no ASAG extension loaded"):
        _run(tmp_path / "b", prompt_file, [webui("no-asag").url])
    with pytest.raises(quality.QualityError, match="404: start the WebUI with --api"):
        _run(tmp_path / "c", prompt_file, [webui("no-api").url])
    with pytest.raises(quality.QualityError, match=r"ASAG did not run.*invalid value"):
        _run(tmp_path / "d", prompt_file, [webui("asag-error").url])
    every_down = webui("dies")
    with pytest.raises(quality.QualityError, match=r"every server failed.*11 image"):
        _run(tmp_path / "e", prompt_file, [every_down.url])


def test_config_parsing():
    c = quality.parse_config("asag:3,layers=input.7,output.0,iterations=4")
    assert c.asag == {"enabled": True, "scale": 3.0, "layers": "input.7,output.0", "iterations": 4}
    assert quality.parse_config("weak_model=identity:2").asag == {"enabled": True, "weak_model": "identity",
                                                                   "scale": 2.0}
    off = quality.parse_config("off,cfg_scale=1")
    assert off.asag is None and off.payload == {"cfg_scale": 1}
    assert quality.parse_config("weak_model=blur:2,blur_sigma=inf").folder == "weak_model=blur_2_blur_sigma=inf"
    for bad, message in (("asag:x", "not a scale"), ("pag:2", "accepted: 'off'"), ("off:2", "no scale"),
                         ("asag,foo=1", "unknown option 'foo'"), ("off,scale=2", "on an 'off'")):
        with pytest.raises(quality.QualityError, match=message):
            quality.parse_config(bad)
    assert quality.parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(quality.QualityError, match="--seeds"):
        quality.parse_seeds("a")


def test_missing_metrics_are_named_with_their_pip_command(tmp_path, prompt_file, webui, monkeypatch):
    monkeypatch.setattr(quality.importlib.util, "find_spec", lambda name: None)
    stream = io.StringIO()
    quality.main(["--out", str(tmp_path / "o"), "--prompts", prompt_file, "--seeds", "0", "--url", webui().url,
                  "--config", "off", "--metrics", "clip,imagereward,hps,fid"], stream=stream)
    text = stream.getvalue()
    assert "pip install torchmetrics transformers" in text and "pip install image-reward" in text
    assert "pip install hpsv2" in text and "torch-fidelity" in text
    assert "grids skipped: pip install pillow" in text
    assert "no metric available" in text


def test_default_prompt_file_has_about_fifty_distinct_prompts():
    prompts = quality.read_prompts(quality.DEFAULT_PROMPTS)
    assert 45 <= len(prompts) <= 60 and len(set(prompts)) == len(prompts)
