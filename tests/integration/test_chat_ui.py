"""``fedpeft chat``: the Gradio UI over a personalised run's adapters, driven in Debian's headless Chromium.

The answers read back from the page are compared with ``fedpeft.models.generate.generate_completions`` (greedy)
on the same adapter, a generation path the UI does not use. The run trains hard enough (lr 0.05, 6 steps) that
``base``, ``client-0`` and ``client-1`` answer differently, so a wrong adapter shows. Set
``FEDPEFT_SCREENSHOT=docs/chat.png`` to write the screenshot there as well as to tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

import fedpeft.cli.chat  # noqa: F401  (registers the command)
from fedpeft.cli import app
from fedpeft.config import load_config
from fedpeft.experiment.run import run_experiment
from fedpeft.models.generate import generate_completions
from fedpeft.serving.adapters import ServedRun, ServingError, load_run
from fedpeft.serving.chat import LIMITS, Sampling, generate_answer, launch_ui, settings_from_ui
from tests.integration.browser import headless_chromium
from tests.integration.conftest import MICRO

NEW_TOKENS = 24
PROMPT = "Write a function that adds two numbers."
WAIT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> ServedRun:
    """A personalised micro run (client-0, client-1) loaded for serving."""
    out = tmp_path_factory.mktemp("chat-runs")
    overrides = ["fl.strategy=local", "fl.rounds=1", "train.lr=0.05", "train.max_steps=6", "eval.every=0"]
    run_dir, _ = run_experiment(load_config("default", [*MICRO, *overrides, f"output.dir={out}"]), quiet=True)
    return load_run(run_dir, "cpu")


def reference(run: ServedRun, name: str, prompt: str = PROMPT) -> str:
    """The greedy answer by fedpeft's batched sampler, which the UI does not use."""
    with run.use(name) as model:
        return generate_completions(model, run.tokenizer, [run.format_prompt(prompt)], 1, 0.0, [], NEW_TOKENS)[0][0]


@pytest.fixture(scope="module")
def answers(run: ServedRun) -> dict[str, str]:
    found = {name: reference(run, name) for name in run.names}
    assert len(set(found.values())) == len(found), f"adapters answer alike, the test could not tell them: {found}"
    return found


@pytest.fixture(scope="module")
def ui(run: ServedRun):
    started = launch_ui(run, "127.0.0.1", free_port(), block=False, quiet=True)
    yield started
    started.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    yield from headless_chromium(tmp_path_factory.mktemp("chromium-profile"), "1280,1150")


def open_page(driver, ui) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(ui.local_url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#fedpeft-send"))


def set_number(driver, elem_id: str, value: int | float) -> None:
    """Type ``value`` into a slider's number box, as a user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    assert float(box.get_attribute("value")) == value


def set_greedy(driver) -> None:
    set_number(driver, "fedpeft-temperature", 0)
    set_number(driver, "fedpeft-num-beams", 1)
    set_number(driver, "fedpeft-max-new-tokens", NEW_TOKENS)


def choose(driver, elem_id: str, name: str) -> None:
    """Pick ``name`` in a dropdown: open it, click the option."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[role=combobox]")
    field.click()
    listbox = field.get_attribute("aria-controls")
    option = f'#{listbox} li[role=option][aria-label="{name}"]'
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, option))[0].click()
    WebDriverWait(driver, WAIT_S).until(lambda d: field.get_attribute("value") == name)


def type_prompt(driver, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea").send_keys(text)


def read_answer(driver, elem_id: str) -> str:
    """The answer box's text once the model has filled it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea")
    WebDriverWait(driver, WAIT_S).until(lambda d: box.get_attribute("value"))
    return box.get_attribute("value")


def save_screenshot(driver, tmp_path: Path) -> Path:
    shot = tmp_path / "chat.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("FEDPEFT_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


def requested_hosts(driver) -> set[str]:
    """Hosts of every http(s)/ws(s) request the page made so far (from Chromium's performance log)."""
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", message["params"]).get("url", "")
            if urlsplit(url).scheme in ("http", "https", "ws", "wss"):
                hosts.add(urlsplit(url).hostname)
    return hosts


@pytest.mark.slow
def test_chat_answer_in_browser_matches_direct_generation(run, answers, ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, ui)
    set_greedy(browser)
    choose(browser, "fedpeft-adapter", "client-1")
    type_prompt(browser, "fedpeft-prompt", PROMPT)
    browser.find_element(By.ID, "fedpeft-send").click()
    assert read_answer(browser, "fedpeft-answer") == answers["client-1"]
    save_screenshot(browser, tmp_path)
    assert requested_hosts(browser) == {"127.0.0.1"}, "the page fetched something from off this machine"
    assert ui.share is False and ui.share_url is None and ui.analytics_enabled is False


@pytest.mark.slow
def test_side_by_side_in_browser(run, answers, ui, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, ui)
    browser.find_element(By.ID, "fedpeft-tab-compare-button").click()
    set_greedy(browser)
    choose(browser, "fedpeft-left", "client-1")
    choose(browser, "fedpeft-right", "client-0")
    type_prompt(browser, "fedpeft-compare-prompt", PROMPT)
    browser.find_element(By.ID, "fedpeft-compare").click()
    assert read_answer(browser, "fedpeft-left-answer") == answers["client-1"]
    assert read_answer(browser, "fedpeft-right-answer") == answers["client-0"]


@pytest.mark.slow
def test_empty_prompt_is_reported_in_the_page(ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, ui)
    browser.find_element(By.ID, "fedpeft-send").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "the prompt is empty" in d.find_element(By.TAG_NAME, "body").text)


def test_answer_matches_direct_generation_for_every_adapter(run, answers):
    greedy = Sampling(temperature=0, num_beams=1, max_new_tokens=NEW_TOKENS)
    assert {name: generate_answer(run, name, PROMPT, greedy) for name in run.names} == answers


def test_sampling_is_seeded_and_matches_direct_sampling(run):
    """Temperature 1 with no top-p or top-k cut samples the same distribution the batched sampler does, from
    the same seed, so the draws agree token for token; another seed draws another answer."""
    plain = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "num_beams": 1, "max_new_tokens": NEW_TOKENS}
    first = generate_answer(run, "client-1", PROMPT, Sampling(**plain, seed=3))
    assert generate_answer(run, "client-1", PROMPT, Sampling(**plain, seed=3)) == first
    assert generate_answer(run, "client-1", PROMPT, Sampling(**plain, seed=4)) != first
    with run.use("client-1") as model:
        direct = generate_completions(
            model, run.tokenizer, [run.format_prompt(PROMPT)], 1, 1.0, [], NEW_TOKENS, seed=3, top_p=1.0
        )
    assert direct == [[first]]


def test_share_stays_off_even_when_gradio_share_is_set(run, monkeypatch):
    monkeypatch.setenv("GRADIO_SHARE", "True")
    started = launch_ui(run, "127.0.0.1", free_port(), block=False, quiet=True)
    try:
        assert started.share is False and started.share_url is None
        assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and started.analytics_enabled is False
    finally:
        started.close()


def test_port_in_use_is_refused(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServingError, match=f"127.0.0.1:{port}.*--port"):
            launch_ui(run, "127.0.0.1", port, block=False, quiet=True)


@pytest.mark.parametrize(
    ("prompt", "sampling", "message"),
    [
        ("   ", {}, "the prompt is empty"),
        ("word " * 600, {}, "over the model's context of 512 tokens"),
        (PROMPT, {"top_p": 0}, "top_p=0: must be between 0.05 and 1"),
        (PROMPT, {"num_beams": 2.5}, "num_beams=2.5 must be an integer"),
        (PROMPT, {"max_new_tokens": 0}, "max_new_tokens=0: must be between 1 and 1024"),
    ],
)
def test_bad_input_is_named(run, prompt, sampling, message):
    """Through the UI's own path: the sliders' values (in LIMITS order) become settings, then an answer."""
    values = {**dataclasses.asdict(Sampling()), **sampling}
    with pytest.raises(ServingError, match=message.replace("(", r"\(")):
        generate_answer(run, run.default, prompt, settings_from_ui(tuple(values[k] for k in LIMITS)))


def test_unknown_adapter_lists_the_choices(run):
    with pytest.raises(ServingError, match="unknown model 'client-7'; this run serves: base, client-0, client-1"):
        generate_answer(run, "client-7", PROMPT, Sampling())


def test_cli_refuses_a_missing_run(tmp_path):
    result = CliRunner().invoke(app, ["chat", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "error: no such run directory" in result.stderr


def test_cli_refuses_a_network_host_from_the_environment(run, monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    result = CliRunner().invoke(app, ["chat", str(run.run_dir)])
    assert result.exit_code == 2 and "pass --host 0.0.0.0 explicitly" in result.stderr


def test_cli_warns_on_an_explicit_network_host(run, monkeypatch):
    import fedpeft.serving.chat as chat

    launched = {}
    monkeypatch.setattr(chat, "launch_ui", lambda run, host, port, **kw: launched.update(host=host, port=port, **kw))
    result = CliRunner().invoke(app, ["chat", str(run.run_dir), "--host", "0.0.0.0", "--port", "7999"])
    assert result.exit_code == 0, result.output
    assert "warning: --host 0.0.0.0: the chat UI is reachable from the network" in result.stderr
    assert launched == {"host": "0.0.0.0", "port": 7999, "block": True, "quiet": True}
    result = CliRunner().invoke(app, ["chat", str(run.run_dir), "--port", "7998"])
    assert "warning" not in result.stderr and launched["host"] == "127.0.0.1"


def test_cli_reports_a_port_in_use(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["chat", str(run.run_dir), "--port", str(port)])
    assert result.exit_code == 2 and f"error: cannot serve the chat UI on 127.0.0.1:{port}" in result.stderr
