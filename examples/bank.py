"""A bank of accounts: each account is a GenServer registered under its owner's name.

A GenServer keeps its state on ``self`` and handles one request at a time, so a balance can
never be read and written by two clients at once: no locks. Clients reach an account by name
with `nb.call` (wait for the answer) or `nb.cast` (fire and forget). An Agent keeps the audit
log, a process holding one value.

Run it:  python examples/bank.py
"""

from __future__ import annotations

from typing import Any

import numbeam as nb


class Account(nb.GenServer):
    """One account. Calls: "balance", ("withdraw", amount). Casts: ("deposit", amount)."""

    async def init(self, owner: str, balance: int) -> None:
        self.owner = owner
        self.balance = balance

    async def handle_call(self, request: Any, caller: Any) -> Any:
        match request:
            case "balance":
                return self.balance
            case ("withdraw", amount) if amount > self.balance:
                return ("refused", f"{self.owner} has only {self.balance}")
            case ("withdraw", amount):
                self.balance -= amount
                return ("ok", self.balance)
        raise ValueError(f"unknown request {request!r}")

    async def handle_cast(self, request: Any) -> None:
        match request:
            case ("deposit", amount):
                self.balance += amount

    async def terminate(self, reason: Any) -> None:
        print(f"  account {self.owner} closes with {self.balance} ({reason!r})")


async def transfer(audit: nb.Pid, source: str, dest: str, amount: int) -> None:
    """Move `amount` from one account to another, and record what happened."""
    answer = await nb.call(source, ("withdraw", amount))
    if answer[0] == "ok":
        nb.cast(dest, ("deposit", amount))
        entry = f"{source} -> {dest}: {amount}"
    else:
        entry = f"{source} -> {dest}: {amount} refused, {answer[1]}"
    await nb.Agent.update(audit, lambda log: [*log, entry])
    print(f"transfer {entry}")


async def main() -> None:
    audit = await nb.Agent.start_link(list)
    for owner, balance in [("alice", 100), ("bob", 50)]:
        pid = await Account.start_link(owner, balance, name=owner)
        print(f"opened account {owner} with {balance}: process {pid}")

    await transfer(audit, "alice", "bob", 30)
    await transfer(audit, "bob", "alice", 500)
    await transfer(audit, "bob", "alice", 80)

    for owner in ("alice", "bob"):
        print(f"balance of {owner}: {await nb.call(owner, 'balance')}")
    log = await nb.Agent.get(audit, lambda log: log)
    print(f"audit log has {len(log)} entries")

    try:
        await nb.call("carol", "balance")
    except nb.NoProc as e:
        print(f"no account for carol: {e}")

    print("closing the bank:")
    for owner in ("alice", "bob"):
        await nb.stop(owner)


if __name__ == "__main__":
    nb.run(main)
