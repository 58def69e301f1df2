"""Python code in cached mode (a warm sandbox from the pool), and its output streamed."""

from faas_sdk import FaaSClient

client = FaaSClient()
result = client.execute(code="print('Hello World')", language="python", mode="cached")
print(result.stdout, end="")

# Stream output in real time (the documents' `client.stream`): events as they happen.
for event in client.stream(code="for i in range(3): print('tick', i)", language="python"):
    if event.type == "stdout":
        print(event.data, end="")
