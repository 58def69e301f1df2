"""Create a snapshot of a run's state, then branch from it: every branch starts from that
state (here: a Python variable) and goes its own way."""

from faas_sdk import FaaSClient

client = FaaSClient()
first = client.execute(
    code="counter = 41\nprint('state ready')",
    language="python",
    mode="checkpointed",
    checkpoint_after=True,
)
print(first.stdout, end="")
assert first.snapshot_id is not None, "checkpointed runs return the snapshot of their end state"

branched = client.execute(
    code="counter += 1\nprint('branch sees', counter)",
    language="python",
    mode="branched",
    parent_snapshot=first.snapshot_id,
    count=3,
)
for branch in branched.branches:
    print(branch.stdout, end="")
client.snapshots.delete(first.snapshot_id)
