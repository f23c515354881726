"""`halflife demo` runs the synthetic shop through the engine and prints triggers live."""

from __future__ import annotations

import re

from tests.conftest import halflife

LINE = re.compile(r"^\d\d:\d\d:\d\d  (\w+) +-> (\w+) +(\S+) ")


def test_demo_prints_triggers():
    run = halflife("demo", "--seconds", "4", "--speed", "30", "--contacts", "200", timeout=60)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    lines = [m for m in map(LINE.match, run.stdout.decode().splitlines()) if m]
    rules = {m.group(1) for m in lines}
    # 2 shop hours of a 200-shopper store: carts are abandoned and hot leads appear
    assert {"cart_abandoned", "hot_lead"} <= rules, rules
    err = run.stderr.decode()
    assert re.search(r"demo done: [\d,]+ events, [\d,]+ trigger records", err)
    assert f"{len(lines):,} trigger records" in err
