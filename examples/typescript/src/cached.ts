// JavaScript and Python code in cached mode (warm sandboxes), output streamed as it comes.
import { FaaSClient } from "@faas/sdk";

const client = new FaaSClient({ baseUrl: process.env.FAAS_URL, apiKey: process.env.FAAS_API_KEY });
const result = await client.execute({ code: 'console.log("Hello World")', language: "javascript", mode: "cached" });
process.stdout.write(result.stdout);
for await (const event of client.stream({ code: "for i in range(3): print('tick', i)", language: "python", mode: "cached" })) {
  if (event.type === "stdout") process.stdout.write(event.data);
}
