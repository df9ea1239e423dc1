"""Every provider wire format through the real binary, driven by the official SDKs.

`gateway-mock` (a separate process speaking each provider's documented format) serves as OpenAI,
Azure, Anthropic, Gemini, Bedrock (SigV4 signed) and Cohere; the gateway is configured with one
provider of each kind, all pointing at it. Each test sends the same request through every
provider, in both client dialects, streamed and not.
"""

import json
import os
import socket
import subprocess
import time

import anthropic
import openai
import pydantic
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY = os.environ.get("GATEWAY_BIN", os.path.join(TARGET, "debug", "gateway-server"))
MOCK = os.environ.get("MOCK_BIN", os.path.join(os.path.dirname(GATEWAY), "gateway-mock"))

PROVIDERS = ["oai", "az", "ant", "gem", "bed", "coh"]
MODEL = {
    "oai": "gpt-4o-mini",
    "az": "gpt-4o-mini",
    "ant": "claude-3-5-haiku-latest",
    "gem": "gemini-2.0-flash",
    "bed": "anthropic.claude-3-5-haiku-20241022-v1:0",
    "coh": "command-r-08-2024",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("providers")
    mport, gport = free_port(), free_port()
    mock = subprocess.Popen([MOCK, "--port", str(mport)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_port(mport, mock)
    up = f"http://127.0.0.1:{mport}"
    config = f"""
[server]
listen = "127.0.0.1:{gport}"
data_dir = "{tmp}"
# One runtime thread: the binary sizes its runtime from the configuration.
worker_threads = 1

[[providers]]
name = "oai"
kind = "openai"
base_url = "{up}/v1"
[[providers.keys]]
name = "k"
secret = "sk-oai"

[[providers]]
name = "az"
kind = "azure"
base_url = "{up}"
deployments = {{ "gpt-4o-mini" = "my-deployment" }}
[[providers.keys]]
name = "k"
secret = "az-key"

[[providers]]
name = "ant"
kind = "anthropic"
base_url = "{up}"
[[providers.keys]]
name = "k"
secret = "sk-ant"

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{up}"
[[providers.keys]]
name = "k"
secret = "gem-key"

[[providers]]
name = "bed"
kind = "bedrock"
base_url = "{up}"
region = "us-east-1"
[[providers.keys]]
name = "k"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

[[providers]]
name = "bedi"
kind = "bedrock"
base_url = "{up}"
region = "us-east-1"
claude_invoke = true
[[providers.keys]]
name = "k"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

[[providers]]
name = "coh"
kind = "cohere"
base_url = "{up}"
[[providers.keys]]
name = "k"
secret = "co-key"
"""
    path = tmp / "gateway.toml"
    path.write_text(config)
    gw = subprocess.Popen([GATEWAY, "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_port(gport, gw)
    yield f"http://127.0.0.1:{gport}"
    gw.terminate()
    mock.terminate()
    gw.wait(timeout=30)
    mock.wait(timeout=30)


def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def ant(url):
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_every_provider(gateway, provider):
    model = f"{provider}/{MODEL[provider]}"
    client = oai(gateway)
    r = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "Be terse."},
                                                              {"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "Hello from the mock upstream."
    assert r.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                            stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "Hello from the mock upstream."
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_every_provider(gateway, provider):
    model = f"{provider}/{MODEL[provider]}"
    client = ant(gateway)
    m = client.messages.create(model=model, max_tokens=100, system="Be terse.",
                               messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text == "Hello from the mock upstream."
    assert m.stop_reason == "end_turn"
    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the mock upstream."
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_round_trip_every_provider(gateway, provider):
    model = f"{provider}/{MODEL[provider]}"
    client = oai(gateway)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    messages.append({"role": "assistant", "content": None,
                     "tool_calls": [{"id": call.id, "type": "function",
                                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C sunny"})
    r = client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert r.choices[0].message.content == "Tool said: 18C sunny"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_legacy_function_calling_every_provider(gateway, provider):
    """The deprecated `functions` / `function_call` / `role: function` API: read as tools for
    every provider, answered in its own form, plain and streamed."""
    model = f"{provider}/{MODEL[provider]}"
    client = oai(gateway)
    functions = [{"name": "get_weather", "description": "weather",
                  "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, functions=functions)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    assert choice.message.tool_calls is None
    args = choice.message.function_call.arguments

    stream = client.chat.completions.create(model=model, messages=messages, functions=functions,
                                            function_call={"name": "get_weather"}, stream=True)
    name, streamed_args, finish = None, "", None
    for chunk in stream:
        for c in chunk.choices:
            fc = c.delta.function_call
            if fc is not None:
                name = fc.name or name
                streamed_args += fc.arguments or ""
            assert not c.delta.tool_calls
            finish = c.finish_reason or finish
    assert (name, finish) == ("get_weather", "function_call")
    assert streamed_args == args

    messages.append({"role": "assistant", "content": None,
                     "function_call": {"name": "get_weather", "arguments": args}})
    messages.append({"role": "function", "name": "get_weather", "content": "18C sunny"})
    r = client.chat.completions.create(model=model, messages=messages, functions=functions)
    assert r.choices[0].message.content == "Tool said: 18C sunny"


@pytest.mark.parametrize("model", [f"ant/{MODEL['ant']}", f"bedi/{MODEL['bed']}"])
def test_anthropic_sdk_extended_thinking_round_trip(gateway, model):
    """An Anthropic provider's (or Claude on Bedrock's, through InvokeModel) thinking blocks reach
    the Anthropic SDK with their signatures, and replaying them in the next turn is accepted (the
    mock checks the signature, and that a tool-use turn starts with its thinking, as the API
    does)."""
    client = ant(gateway)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    tools = [{"name": "get_weather", "description": "weather",
              "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    m = client.messages.create(model=model, max_tokens=2048, thinking=thinking, tools=tools,
                               messages=messages)
    assert [b.type for b in m.content] == ["thinking", "tool_use"]
    assert m.content[0].signature and m.content[0].thinking
    messages += [{"role": "assistant", "content": m.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": m.content[1].id,
                                               "content": "18C sunny"}]}]
    with client.messages.stream(model=model, max_tokens=2048, thinking=thinking, tools=tools,
                                messages=messages) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature == m.content[0].signature
    assert final.content[1].text == "Tool said: 18C sunny"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=model, max_tokens=2048, thinking=thinking, tools=tools,
                               messages=[messages[0], {"role": "assistant", "content": m.content[1:]},
                                         messages[2]])


def test_anthropic_sdk_count_tokens(gateway):
    """Anthropic, Gemini and Bedrock providers count for themselves (the mock: a token per four
    characters); a provider that cannot count gets the gateway's estimate, marked as one."""
    client = ant(gateway)
    messages = [{"role": "user", "content": "hello there, how many tokens is this?"}]
    counted = client.messages.with_raw_response.count_tokens(
        model=f"ant/{MODEL['ant']}", system="Be terse.", messages=messages)
    assert counted.parse().input_tokens == (9 + 37) // 4
    assert counted.headers.get("x-gateway-estimate") is None
    # Gemini counts too (countTokens; the mock counts the contents, not the system instruction).
    counted = client.messages.with_raw_response.count_tokens(
        model=f"gem/{MODEL['gem']}", system="Be terse.", messages=messages)
    assert counted.parse().input_tokens == 37 // 4
    assert counted.headers.get("x-gateway-estimate") is None
    # Bedrock counts too (CountTokens, with the request as Converse would send it).
    counted = client.messages.with_raw_response.count_tokens(
        model=f"bed/{MODEL['bed']}", system="Be terse.", messages=messages)
    assert counted.parse().input_tokens == (9 + 37) // 4
    assert counted.headers.get("x-gateway-estimate") is None
    estimated = client.messages.with_raw_response.count_tokens(model=f"oai/{MODEL['oai']}", messages=messages)
    assert estimated.parse().input_tokens > 0
    assert estimated.headers.get("x-gateway-estimate") == "true"


def test_openai_sdk_responses_api(gateway):
    """The Responses API through the gateway to an OpenAI-format provider, plain and streamed,
    with a function-call round trip; a provider that does not speak it is refused with a 400."""
    client = oai(gateway)
    r = client.responses.create(model=f"oai/{MODEL['oai']}", instructions="Be terse.", input="hi",
                                max_output_tokens=64)
    assert r.status == "completed" and r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    # The stored answer, through the key that made it.
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text
    assert list(client.responses.input_items.list(r.id)) == []
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)

    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    call = client.responses.create(model=f"oai/{MODEL['oai']}", input="weather in Paris", tools=tools)
    fc = [o for o in call.output if o.type == "function_call"][0]
    assert fc.name == "get_weather"
    done = client.responses.create(model=f"oai/{MODEL['oai']}", tools=tools, input=[
        {"role": "user", "content": "weather in Paris"},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "18C sunny"},
    ])
    assert "18C sunny" in done.output_text

    with client.responses.stream(model=f"oai/{MODEL['oai']}", input="hi") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == r.output_text and final.usage.output_tokens > 0

    # Continuing a stored response needs an OpenAI-format provider.
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=f"ant/{MODEL['ant']}", input="hi", previous_response_id=r.id)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_responses_api_every_provider(gateway, provider):
    """The Responses API through every kind: OpenAI-format ones pass it through, the others get
    it as chat and answer with Responses objects and events the SDK accepts."""
    client = oai(gateway)
    model = f"{provider}/{MODEL[provider]}"
    r = client.responses.create(model=model, instructions="Be terse.", input="hi", max_output_tokens=64)
    assert r.status == "completed" and r.output_text
    assert r.usage.output_tokens > 0
    with client.responses.stream(model=model, input="hi") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == r.output_text

    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    call = client.responses.create(model=model, input="weather in Paris", tools=tools)
    fc = [o for o in call.output if o.type == "function_call"][0]
    assert fc.name == "get_weather"
    with client.responses.stream(model=model, input="weather in Paris", tools=tools) as s:
        streamed = s.get_final_response()
    sfc = [o for o in streamed.output if o.type == "function_call"][0]
    assert (sfc.name, sfc.arguments) == (fc.name, fc.arguments)
    done = client.responses.create(model=model, tools=tools, input=[
        {"role": "user", "content": "weather in Paris"},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "18C sunny"},
    ])
    assert done.output_text == "Tool said: 18C sunny"


def test_openai_sdk_legacy_completions(gateway):
    """OpenAI's legacy Completions API through an OpenAI-format provider, plain and streamed."""
    client = oai(gateway)
    r = client.completions.create(model=f"oai/{MODEL['oai']}", prompt="def add(a, b):", max_tokens=16)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.total_tokens > 0
    text, usage = "", None
    for chunk in client.completions.create(model=f"oai/{MODEL['oai']}", prompt="def add(a, b):",
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert text == r.choices[0].text and usage is not None and usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=f"ant/{MODEL['ant']}", prompt="x")


@pytest.mark.parametrize("provider,model", [("gem", "gemini-2.5-flash"),
                                            ("bed", "us.anthropic.claude-sonnet-4-20250514-v1:0")])
def test_anthropic_thinking_on_other_providers(gateway, provider, model):
    """An Anthropic client's extended thinking reaches Gemini (a thinking budget asking for thought
    summaries) and Claude on Bedrock Converse (`additionalModelRequestFields.thinking`); the
    provider's reasoning comes back as a thinking block before the text, whole and streamed."""
    client = ant(gateway)
    ask = dict(model=f"{provider}/{model}", max_tokens=4096,
               messages=[{"role": "user", "content": "hello"}])
    thinking = {"type": "enabled", "budget_tokens": 2048}
    m = client.messages.create(thinking=thinking, **ask)
    assert [b.type for b in m.content] == ["thinking", "text"], m.content
    assert m.content[0].thinking.startswith("The user wants an answer")
    assert m.content[1].text == "Hello from the mock upstream."
    with client.messages.stream(thinking=thinking, **ask) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"], final.content
    assert final.content[0].thinking.startswith("The user wants an answer")
    assert final.content[1].text == "Hello from the mock upstream."
    # Not asked for: the text comes first, as Anthropic answers without thinking.
    m = client.messages.create(**ask)
    assert [b.type for b in m.content] == ["text"], m.content
    if provider == "gem":
        # Adaptive thinking: Gemini's dynamic thinking, its thoughts back.
        m = client.messages.create(thinking={"type": "adaptive"}, **ask)
        assert [b.type for b in m.content] == ["thinking", "text"], m.content


def test_bedrock_embeddings(gateway):
    """Embeddings on Bedrock go through `InvokeModel` in each model's own body: Titan Text
    Embeddings one text a call (with its dimensions), Cohere Embed in one call; the answer is
    OpenAI's list in input order with Bedrock's token counts."""
    client = oai(gateway)
    texts = ["alpha", "beta gamma", "delta"]
    r = client.embeddings.create(model="bed/amazon.titan-embed-text-v2:0", input=texts, dimensions=256)
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(len(d.embedding) == 256 for d in r.data)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0
    one = client.embeddings.create(model="bed/amazon.titan-embed-text-v2:0", input="beta gamma", dimensions=256)
    assert one.data[0].embedding == r.data[1].embedding, "the vectors come back in input order"
    c = client.embeddings.create(model="bed/cohere.embed-english-v3", input=texts, encoding_format="float")
    assert len(c.data) == 3 and len(c.data[0].embedding) > 0
    assert c.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="bed/amazon.titan-embed-text-v2:0", input="x", dimensions=100)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_stream_helper_tool_calls_every_provider(gateway, provider):
    """The OpenAI SDK's stream helper (`chat.completions.stream`) sees each tool call end
    (`tool_calls.function.arguments.done`) whichever provider answered: a translated stream ends
    its choice with a chunk of its own, as OpenAI does."""
    client = oai(gateway)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    with client.chat.completions.stream(model=f"{provider}/{MODEL[provider]}", tools=tools,
                                        messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        done = [e for e in s if e.type == "tool_calls.function.arguments.done"]
        final = s.get_final_completion()
    assert [(e.index, e.name) for e in done] == [(0, "get_weather")], done
    assert json.loads(done[0].arguments) == json.loads(final.choices[0].message.tool_calls[0].function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


# Providers with a structured-output field of their own (the mock follows the schema it is
# given there); `anthropic` and `bedrock` get the schema as an instruction from an OpenAI
# client, which the mock does not read.
SCHEMA_PROVIDERS = ["oai", "az", "gem", "coh"]


@pytest.mark.parametrize("provider", SCHEMA_PROVIDERS)
def test_openai_parse_every_provider(gateway, provider):
    """`chat.completions.parse` with a Pydantic model: the schema reaches the provider in its
    own field and the answer parses into the model."""
    r = oai(gateway).chat.completions.parse(model=f"{provider}/{MODEL[provider]}", response_format=Weather,
                                            messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert r.choices[0].message.parsed == Weather(city="mock", temp_c=1)


@pytest.mark.parametrize("provider", SCHEMA_PROVIDERS + ["ant"])
def test_anthropic_structured_outputs_every_provider(gateway, provider):
    """Anthropic's structured outputs (`messages.parse(output_format=...)`, which sends
    `output_config.format`) reach every provider: Anthropic as written, the others as their own
    schema field."""
    client = ant(gateway)
    m = client.messages.parse(model=f"{provider}/{MODEL[provider]}", max_tokens=200, output_format=Weather,
                              messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert m.parsed_output == Weather(city="mock", temp_c=1)


def test_openai_endpoints_passed_on(gateway):
    """Moderations, image generation and speech go to an OpenAI-format provider as the client
    wrote them (model rewritten) and come back as they came, audio included."""
    client = oai(gateway)
    m = client.moderations.create(model="oai/omni-moderation-latest", input=["fine", "FLAGME now"])
    assert [r.flagged for r in m.results] == [False, True]
    img = client.images.generate(model="oai/gpt-image-1", prompt="a cat")
    assert img.data[0].b64_json and img.usage.output_tokens > 0
    raw = client.images.with_raw_response.generate(model="oai/dall-e-3", prompt="a cat", n=1)
    assert raw.headers["x-gateway-provider"] == "oai"
    assert raw.parse().data[0].url.startswith("https://")
    speech = client.audio.speech.create(model="oai/gpt-4o-mini-tts", voice="alloy", input="hi")
    assert speech.content.startswith(b"ID3")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    # Uploads: the `model` form field is rewritten, the file passed on as it came.
    audio = ("hello.mp3", b"ID3\x04\x00fake-audio-bytes", "audio/mpeg")
    t = client.audio.transcriptions.create(model="oai/whisper-1", file=audio)
    assert t.text == "Hello from the mock upstream."
    text = client.audio.transcriptions.create(model="az/whisper-1", file=audio, response_format="text")
    assert "Hello from the mock upstream." in text
    # Azure: at the deployment's own paths; it has no moderations endpoint.
    img = client.images.generate(model="az/gpt-4o-mini", prompt="a cat", response_format="b64_json")
    assert img.data[0].b64_json
    speech = client.audio.speech.create(model="az/gpt-4o-mini", voice="alloy", input="hi")
    assert speech.content.startswith(b"ID3")
    with pytest.raises(openai.BadRequestError):
        client.moderations.create(model="az/gpt-4o-mini", input="x")
    # A provider of another format has no such endpoint: the client hears it, in OpenAI's shape.
    with pytest.raises(openai.BadRequestError) as e:
        client.moderations.create(model="ant/claude-3-5-haiku-latest", input="x")
    assert "does not serve" in e.value.body["message"], e.value.body
    with pytest.raises(openai.BadRequestError):
        client.post("/audio/speech", body={"voice": "alloy", "input": "hi"}, cast_to=object)
