"""The user's first example: run `echo 'Hello!'` in a fresh sandbox.

Adapted: the documents pass image="alpine"; this server has no image registry (see
docs/ARCHITECTURE.md), so the run uses the default image (`host`: the host's /usr, read-only).
"""

from faas_sdk import FaaSClient

client = FaaSClient()  # FAAS_URL and FAAS_API_KEY from the environment
result = client.execute("echo 'Hello!'")
print(result.stdout, end="")
