// The user's first example: run `echo 'Hello!'` in a fresh sandbox. Adapted: the documents
// pass the image 'alpine'; this server has no image registry, so the default image is used.
import { FaaSClient } from "@faas/sdk";

const client = new FaaSClient({ baseUrl: process.env.FAAS_URL, apiKey: process.env.FAAS_API_KEY });
const result = await client.execute('echo "Hello!"');
process.stdout.write(result.stdout);
