"""The official OpenAI and Anthropic Python SDKs against the real gateway-server binary.

The gateway runs on its embedded demo configuration (in-process mock providers, no keys), so this
checks what users see: changing only the SDK's base URL is enough.
Run by .ci/run after `cargo build`; needs `pip install openai anthropic pytest`.
"""

import base64
import os
import socket
import subprocess
import time

import anthropic
import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target", "debug", "gateway-server"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("data")
    env = dict(os.environ, GATEWAY_DATA_DIR=str(data), GATEWAY_ADMIN_TOKEN="sdk-admin")
    proc = subprocess.Popen([BINARY, "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="any-key", max_retries=0)


def ant(url):
    return anthropic.Anthropic(base_url=url, api_key="any-key", max_retries=0)


def test_openai_chat(gateway):
    r = oai(gateway).chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert r.usage.total_tokens > 0


def test_openai_stream_with_usage(gateway):
    stream = oai(gateway).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text
    assert usage is not None and usage.completion_tokens > 0


def test_openai_tools(gateway):
    r = oai(gateway).chat.completions.create(
        model="fast/gpt-4o-mini", messages=[{"role": "user", "content": "weather in Paris"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_openai_embeddings_default_base64(gateway):
    r = oai(gateway).embeddings.create(model="fast/text-embedding-3-small", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0
    assert isinstance(r.data[0].embedding[0], float)


def test_openai_models(gateway):
    ids = [m.id for m in oai(gateway).models.list()]
    assert "chat" in ids and "fast/gpt-4o-mini" in ids


def test_anthropic_models_list_pages(gateway):
    """Anthropic's list is paged (`limit`, `after_id`, `has_more`); the OpenAI one is whole."""
    everything = [m.id for m in oai(gateway).models.list()]
    assert len(everything) >= 3, everything
    client = ant(gateway)
    first = client.models.list(limit=2)
    assert [m.id for m in first.data] == everything[:2]
    assert first.has_more and first.last_id == everything[1]
    # The SDK's auto-paging walks every page with `after_id`.
    assert [m.id for m in client.models.list(limit=1)] == everything
    assert [m.id for m in client.models.list()] == everything
    with pytest.raises(anthropic.BadRequestError) as e:
        client.models.list(limit=0)
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_openai_errors(gateway):
    with pytest.raises(openai.NotFoundError):
        oai(gateway).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        oai(gateway).chat.completions.create(model="chat", messages=[])


def test_anthropic_messages(gateway):
    m = ant(gateway).messages.create(model="chat", max_tokens=64, system="Be terse.",
                                     messages=[{"role": "user", "content": "hi"}])
    assert m.type == "message" and m.content[0].type == "text" and m.content[0].text
    assert m.usage.output_tokens > 0


def test_anthropic_stream(gateway):
    with ant(gateway).messages.stream(model="chat", max_tokens=64,
                                      messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"


def test_anthropic_tool_use_stream(gateway):
    with ant(gateway).messages.stream(
            model="fast/gpt-4o-mini", max_tokens=64,
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            messages=[{"role": "user", "content": "weather?"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].name == "get_weather"


def test_anthropic_errors(gateway):
    with pytest.raises(anthropic.NotFoundError):
        ant(gateway).messages.create(model="no-such-model", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])


def test_config_file_json_lines_and_flush_on_shutdown(tmp_path):
    """`--config=FILE` with a host-name listen address; with `[logging] stdout = "json"` stdout
    holds only request lines (the banner goes to stderr), and a request made just before SIGTERM
    is written before the process exits."""
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
[server]
listen = "localhost:{port}"
data_dir = "{tmp_path / 'data'}"
[logging]
stdout = "json"
[[providers]]
name = "m"
kind = "mock"
dialect = "openai"
models = ["gpt-4o-mini"]
[[providers.keys]]
name = "k"
[[virtual_keys]]
name = "short"
secret = "vk-1"
""")
    proc = subprocess.Popen([BINARY, f"--config={cfg}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.time() < deadline, "gateway did not start"
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="vk-1", max_retries=0)
        r = client.chat.completions.create(model="m/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="vk-2", max_retries=0) \
                .chat.completions.create(model="m/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    lines = [line for line in out.decode().splitlines() if line.strip()]
    import json
    records = [json.loads(line) for line in lines]
    assert [rec["status"] for rec in records] == [200, 401], records
    assert records[0]["virtual_key"] == "short"
    assert "listening on" in err.decode()


def test_check_validates_without_touching_the_data_dir(tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "gw.toml"
    body = f"""
[server]
data_dir = "{data}"
[[providers]]
name = "m"
kind = "mock"
[[providers.keys]]
name = "k"
[[virtual_keys]]
name = "v"
secret = "vk-check-0123456789"
"""
    cfg.write_text(body)
    ok = subprocess.run([BINARY, "--config", str(cfg), "--check"], capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr.decode()
    assert b"configuration is valid" in ok.stdout
    assert not data.exists(), "--check opened no store"
    # Every problem at once, one line each: an unset variable, a governance field, a route.
    cfg.write_text(body + 'budget_usd = 5\nbudget_period = "fortnight"\n'
                   + '[[routes]]\nname = "r"\ntargets = [{ provider = "nope", model = "x" }]\n'
                   + '[[virtual_keys]]\nname = "w"\nsecret = "${GW_SDK_TEST_UNSET_VAR}"\n')
    env = {k: v for k, v in os.environ.items() if k != "GW_SDK_TEST_UNSET_VAR"}
    bad = subprocess.run([BINARY, "--config", str(cfg), "--check"], capture_output=True, timeout=60, env=env)
    assert bad.returncode != 0
    err = bad.stderr.decode()
    lines = [l for l in err.splitlines() if l.strip().startswith("- ")]
    assert any("GW_SDK_TEST_UNSET_VAR" in l for l in lines), err
    assert any("virtual_keys[0].budget_period" in l for l in lines), err
    assert any("routes[0].targets[0].provider" in l for l in lines), err
    assert not data.exists()


def test_models_retrieve_with_both_sdks(gateway):
    client = oai(gateway)
    assert client.models.retrieve("chat").id == "chat"
    assert client.models.retrieve("fast/gpt-4o-mini").id == "fast/gpt-4o-mini"
    # Served as a bare name though listed under its provider.
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert ant(gateway).models.retrieve("chat").id == "chat"
    with pytest.raises(anthropic.NotFoundError) as e:
        ant(gateway).models.retrieve("no-such-model")
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
