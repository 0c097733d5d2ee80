"""The web console in a real headless browser (Debian's chromium, driven by playwright).

Two farms behind it:
  * fake agents (tests/support/status_docs.py) serving contract-shaped /status documents on
    127.0.0.1, the console in this process: the page draws what /status says, follows a
    failover scripted into the documents, and shows hostile names as text;
  * a real lab farm (3 namespace nodes, real agents with --observe-address on their farm
    address, bounded traffic): `vipfarm console --farm-file` and the browser both run in the
    lab's client namespace; the grid matches the agents' /status and the filters' pinned maps,
    every node shows a packet rate, a drain and an undrain (farm file + SIGHUP) move the
    node's cells away and back, and a node crashed with faults.crash() leaves the grid and
    shows in the timeline as a Failover within seconds.

Each test saves a screenshot into its tmp dir; with VIPFARM_SCREENSHOT=docs/console.png (a path
relative to the repo) the lab test also writes its own there, taken just after the failover:
that is the picture in the README.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import sync_playwright

from nodeagent.console import Console, make_server, standalone_source
from nodeagent.lab import faults
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml, node_ip
from tests.support.status_docs import StatusServer, farm_entry, member, status_document

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NODES = ("n1", "n2", "n3")
BUCKETS = 1024
HOSTILE = '<img src=x onerror="document.title=1">'

# JS run in the page: the grid's owners as the cells say (data-owner, "" for no owner).
GRID_OWNERS = "farm => Array.from(document.querySelectorAll(`section.farm[data-farm='${farm}'] .grid .cell`), c => c.dataset.owner)"
FAILOVER_SHOWN = """([farm, lost]) => {
  const s = document.querySelector(`section.farm[data-farm='${farm}']`);
  if (!s) return false;
  const cells = s.querySelectorAll('.grid .cell');
  const owned = s.querySelectorAll(`.grid .cell[data-owner='${lost}']`).length;
  const failover = s.querySelector(`ol.timeline li[data-kind='Failover'][data-nodes~='${lost}']`);
  return cells.length > 0 && owned === 0 && failover !== null;
}"""


def open_browser(pw, profile_dir: str, executable: str = CHROMIUM):
    """A fresh-profile chromium context; `executable` may be a wrapper that enters a namespace."""
    return pw.chromium.launch_persistent_context(profile_dir, executable_path=executable, headless=True,
                                                 args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 700})


def screenshot(page, tmp_path, *, publish: bool) -> None:
    """Into the test's tmp dir always; with `publish`, also where VIPFARM_SCREENSHOT says."""
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    wanted = os.environ.get("VIPFARM_SCREENSHOT") if publish else None
    if wanted:
        path = wanted if os.path.isabs(wanted) else os.path.join(REPO, wanted)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        page.screenshot(path=path, full_page=True)


def expect_owners(page, farm: str, owners: list, timeout_s: float = 10.0) -> None:
    """Wait until the page's grid says exactly `owners` (None = no owner); the page polls, so a
    change reaches it within a poll or two."""
    want = ["" if o is None else o for o in owners]
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        got = page.evaluate(GRID_OWNERS, farm)
        if got == want:
            return
        time.sleep(0.2)
    diff = [i for i, (a, b) in enumerate(zip(got or [], want)) if a != b]
    raise AssertionError(f"the grid of {farm} shows {len(got or [])} cells, {len(diff)} with another owner than "
                         f"the status (first: {diff[:5]}) after {timeout_s}s; want {len(want)} cells")


# -- fake agents ------------------------------------------------------------------------------------

def check(name: str, state: str = "Passing", recovery_runs: int = 0) -> dict:
    return {"name": name, "state": state, "lastRun": "2026-12-02T10:00:00Z", "recoveryRuns": recovery_runs}


def fake_docs(owners, *, lost: str | None = None, accepted: int = 0, events=(), last_failover=None,
              hostile: bool = False):
    """Each node's /status for farm web: every node agrees on `owners`; `lost` is Out; with
    `hostile`, n2 has a checker whose name is markup."""
    docs = {}
    for k, n in enumerate(NODES, 1):
        members = [member(m, node_ip(i), state="Out" if m == lost else "Serving",
                          reason="HeartbeatTimeout" if m == lost else "", last_heard_ms=None if m == lost else 40)
                   for i, m in enumerate(NODES, 1)]
        checks = [check("http")] + ([check(HOSTILE, "Failing", recovery_runs=2)] if hostile and n == "n2" else [])
        docs[n] = status_document(n, [farm_entry("web", node=n, members=members, buckets=len(owners), owners=owners,
                                                 counters={"accepted": accepted * k}, checks=checks,
                                                 events=list(events), last_failover=last_failover)])
    return docs


def test_the_page_draws_the_agents_status_and_follows_a_failover(tmp_path):
    before = [NODES[b % len(NODES)] for b in range(BUCKETS)]
    agents = {n: StatusServer(d) for n, d in fake_docs(before, accepted=1000, hostile=True).items()}
    server = make_server(Console(standalone_source([a.address for a in agents.values()])), "127.0.0.1:0")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as pw:
            ctx = open_browser(pw, str(tmp_path / "profile"))
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(server.url)
            page.wait_for_selector("section.farm[data-farm='web'] .grid .cell")
            assert page.title() == "vipfarm console"
            expect_owners(page, "web", before)
            assert page.locator("table.members tbody tr").evaluate_all("rs => rs.map(r => r.dataset.node)") == list(NODES)
            assert page.locator("#access").text_content() == "read-only"
            assert page.locator("button").count() == 0                      # read-only: no action buttons
            # A hostile checker name is text: shown as typed, no element made of it.
            assert HOSTILE + " Failing" in page.locator("tr[data-node='n2']").inner_text()
            assert page.locator("img").count() == 0 and page.title() == "vipfarm console"
            legend = page.locator("section.farm .legend li").all_inner_texts()
            assert legend == ["n1 342 (33.4%)", "n2 341 (33.3%)", "n3 341 (33.3%)"]

            # Packets flow: the next polls see the counters grow, the page shows a rate per node.
            for n, d in fake_docs(before, accepted=5000).items():
                agents[n].doc = d
            page.wait_for_function("() => [...document.querySelectorAll('td[data-rate]')]"
                                   ".filter(td => parseFloat(td.dataset.rate) > 0).length === 3", timeout=10_000)

            # n3 dies: its agent stops answering; the survivors' views move its buckets, log the failover.
            after = [o if o != "n3" else ("n1" if b % 2 else "n2") for b, o in enumerate(before)]
            fo = {"at": "2026-12-02T10:00:05Z", "kind": "Failover", "nodes": ["n3"], "durationMs": 287}
            agents["n3"].close()
            for n, d in fake_docs(after, lost="n3", accepted=6000, events=[fo], last_failover=fo).items():
                if n != "n3":
                    agents[n].doc = d
            page.wait_for_function(FAILOVER_SHOWN, arg=["web", "n3"], timeout=10_000)
            expect_owners(page, "web", after)
            assert "Failover" in page.locator("ol.timeline li").first.inner_text()
            assert "287 ms" in page.locator("ol.timeline li").first.inner_text()
            row = page.locator("tr[data-node='n3']")
            assert row.locator("td[data-state]").get_attribute("data-state") == "Out"
            assert row.locator("td[data-answered]").inner_text() == "no answer"
            assert agents["n3"].address in page.locator("#errors").inner_text()
            screenshot(page, tmp_path, publish=False)
            ctx.close()
    finally:
        server.shutdown()
        server.server_close()
        for a in agents.values():
            a.close()


# -- a real lab farm ------------------------------------------------------------------------------

FARM = "web"
VIP = "203.0.113.10"
OBSERVE_PORT = 9478
CONSOLE = "127.0.0.1:9480"
STATUS_SNIPPET = textwrap.dedent("""
    import json, sys
    from nodeagent.status_client import fetch_all
    from vipfarm.status_view import merge_agent_statuses
    answers = fetch_all(sys.argv[1:], timeout=2)
    print(json.dumps({"views": merge_agent_statuses(answers.statuses), "errors": answers.errors}))
""")


def lab_status(lab: Lab, nodes=(1, 2, 3)) -> dict:
    """The agents' /status, merged, as asked from the client namespace."""
    res = lab.run(lab.client, [sys.executable, "-c", STATUS_SNIPPET] + [f"{node_ip(k)}:{OBSERVE_PORT}" for k in nodes])
    return json.loads(res.stdout)


def pinned_owners(lab: Lab, nodes=(1, 2, 3)) -> list:
    """bucket -> the node whose filter holds it, from the pinned maps (the ground truth)."""
    owners = [None] * BUCKETS
    for k in nodes:
        for b in lab.owned(k, FARM) or ():
            owners[b] = f"n{k}"
    return owners


def chromium_in(lab: Lab, tmp_path) -> str:
    """A wrapper that runs chromium in the lab's client namespace (playwright talks to it over
    inherited pipes, so the test drives a browser that sees the lab, not the host)."""
    path = tmp_path / "chromium-in-lab"
    path.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{lab.client} -- {CHROMIUM} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# A planned move shown: the node owns no cell (drain) or some again (undrain), and the timeline
# has the event naming it.
MOVE_SHOWN = """([farm, node, kind, owns]) => {
  const s = document.querySelector(`section.farm[data-farm='${farm}']`);
  if (!s) return false;
  const owned = s.querySelectorAll(`.grid .cell[data-owner='${node}']`).length;
  const ev = s.querySelector(`ol.timeline li[data-kind='${kind}'][data-nodes~='${node}']`);
  return (owns ? owned > 0 : owned === 0) && ev !== null;
}"""
RATES_ABOVE_ZERO = """nodes => nodes.every(n => {
  const td = document.querySelector(`tr[data-node='${n}'] td[data-rate]`);
  return td !== null && parseFloat(td.dataset.rate) > 0;
})"""


def off_the_browser_loop(fn, *args):
    """fn(*args) in a thread of its own: playwright's sync API keeps an asyncio loop running in
    this thread, and pyroute2 (faults.crash) refuses to start its own inside a running one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def farm_text(lab: Lab, drained: tuple[str, ...] = ()) -> str:
    return farm_yaml(FARM, [VIP], {n: 1 for n in NODES}, key_file=lab.key_file, drained=drained,
                     rules='    - {protocol: TCP, ports: "80", affinity: ClientIPPort}\n')


def reconfigure(lab: Lab, path: str, text: str, agents: dict) -> None:
    """A standalone drain: the farm file replaced whole, then SIGHUP to every agent."""
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)
    for p in agents.values():
        if p.poll() is None:
            p.send_signal(signal.SIGHUP)


def test_the_console_shows_a_lab_farm_its_drain_and_its_failover(tmp_path):
    with Lab(nodes=3, clients=4) as lab:
        farm_file = lab.write_farm(FARM, farm_text(lab))
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        agents = {}
        for k in (1, 2, 3):
            agents[k] = lab.spawn(lab.node(k), [sys.executable, "-m", "nodeagent.main", "--node", f"n{k}",
                                                "--pin-root", lab.pin_root, "--state-root", lab.state_root,
                                                "--farm-file", farm_file,
                                                "--observe-address", f"{node_ip(k)}:{OBSERVE_PORT}"],
                                  log_name=f"agent-n{k}.log")
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, agents[k], timeout=180)
        lab.wait_converged(FARM, [1, 2, 3], timeout=60)
        # 40 new connections a second for at most 60 s (each its own client port, so every node
        # gets some): what the packet rates show.
        lab.spawn(lab.client, [sys.executable, "-m", "nodeagent.lab.traffic", "steady", "--vip", VIP, "--port", "80",
                               "--seconds", "60", "--rate", "40", "--timeout", "0.5"]
                  + [a for ip in client_ips(4) for a in ("--src", ip)], log_name="steady.log")
        console = lab.spawn(lab.client, [sys.executable, "-m", "nodeagent.cli", "console", "--farm-file", farm_file,
                                         "--listen", CONSOLE], log_name="console.log")
        deadline = time.monotonic() + 30
        while "event=console_listening" not in lab.log("console.log"):
            assert console.poll() is None and time.monotonic() < deadline, lab.log("console.log")
            time.sleep(0.1)
        status = lab_status(lab)
        assert status["errors"] == [], status["errors"]
        [view] = status["views"]
        assert view["owners"] == pinned_owners(lab), "the agents' /status disagrees with their filters"

        with sync_playwright() as pw:
            ctx = open_browser(pw, str(tmp_path / "profile"), chromium_in(lab, tmp_path))
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(f"http://{CONSOLE}/")
            page.wait_for_selector(f"section.farm[data-farm='{FARM}'] .grid .cell")
            assert page.locator(".grid .cell").count() == BUCKETS
            expect_owners(page, FARM, view["owners"])
            assert page.locator("table.members tbody tr").evaluate_all("rs => rs.map(r => r.dataset.node)") == list(NODES)
            assert page.locator("button").count() == 0
            page.wait_for_function(RATES_ABOVE_ZERO, arg=list(NODES), timeout=15_000)

            # A drain of n2 and its undrain, live: its cells go to the others and come back.
            reconfigure(lab, farm_file, farm_text(lab, drained=("n2",)), agents)
            page.wait_for_function(MOVE_SHOWN, arg=[FARM, "n2", "Drain", False], timeout=15_000)
            lab.wait_converged(FARM, [1, 2, 3], idle=(2,), timeout=30)
            expect_owners(page, FARM, pinned_owners(lab))
            assert page.locator("tr[data-node='n2'] td[data-state]").get_attribute("data-state") in ("Draining", "Drained")
            reconfigure(lab, farm_file, farm_text(lab), agents)
            page.wait_for_function(MOVE_SHOWN, arg=[FARM, "n2", "Undrain", True], timeout=15_000)
            lab.wait_converged(FARM, [1, 2, 3], timeout=30)
            expect_owners(page, FARM, pinned_owners(lab))

            off_the_browser_loop(faults.crash, lab, 3)
            page.wait_for_function(FAILOVER_SHOWN, arg=[FARM, "n3"], timeout=15_000)
            survivors = lab.wait_converged(FARM, [1, 2], timeout=30)
            expect_owners(page, FARM, pinned_owners(lab, (1, 2)))
            assert sum(map(len, survivors.values())) == BUCKETS
            assert page.locator("tr[data-node='n3'] td[data-answered]").inner_text() == "no answer"
            page.wait_for_function(RATES_ABOVE_ZERO, arg=["n1", "n2"], timeout=15_000)
            screenshot(page, tmp_path, publish=True)
            ctx.close()
