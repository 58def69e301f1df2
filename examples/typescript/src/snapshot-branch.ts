// Create a snapshot of a run's state, then branch from it (the documents' createSnapshot
// and createBranch): a checkpointed run returns the snapshot of its end state, and a
// branched run starts `count` copies of that state.
import { FaaSClient } from "@faas/sdk";

const client = new FaaSClient({ baseUrl: process.env.FAAS_URL, apiKey: process.env.FAAS_API_KEY });
const first = await client.execute({
  code: 'let greeting = "Hello"; console.log("state ready")',
  language: "javascript",
  mode: "checkpointed",
  checkpointAfter: true,
});
process.stdout.write(first.stdout);
if (!first.snapshotId) throw new Error("checkpointed runs return the snapshot of their end state");
const branched = await client.execute({
  code: 'console.log(greeting + " from Branch 1")',
  language: "javascript",
  mode: "branched",
  parentSnapshot: first.snapshotId,
  count: 2,
});
for (const branch of branched.branches) process.stdout.write(branch.stdout);
await client.snapshots.delete(first.snapshotId);
