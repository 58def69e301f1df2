import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inspect } from "node:util";

import {
  AuthenticationError,
  FaaSClient,
  NotFoundError,
  NotSupportedError,
  RateLimitError,
  ValidationError,
} from "../src/index.js";
import { ADMIN_KEY, isRoot, startServer, type TestServer } from "./server.js";

const skip = isRoot() ? false : "the SDK tests start a real server: they need root";

describe("FaaSClient against a real server", { skip }, () => {
  let server: TestServer;
  let client: FaaSClient;
  let key: string;

  before(async () => {
    server = await startServer();
    key = await server.key("ts-tests");
    client = new FaaSClient({ baseUrl: server.url, apiKey: key });
  });
  after(async () => server?.stop());

  test("executes a command string, argv and code", async () => {
    const hello = await client.execute("echo 'Hello!'");
    assert.equal(hello.stdout, "Hello!\n");
    assert.equal(hello.exitCode, 0);
    assert.equal(hello.status, "exited");
    assert.ok(hello.usage.peakMemoryBytes > 0);
    assert.equal((await client.executions.get(hello.id)).stdout, "Hello!\n");
    assert.equal((await client.execute(["printf", "%s-%s", "a b", "c"])).stdout, "a b-c");
    const cached = await client.execute({ code: "print(6 * 7)", language: "python", mode: "cached" });
    assert.equal(cached.stdout, "42\n");
    assert.equal(cached.mode, "cached");
    assert.equal((await client.runCode("console.log(1 + 1)", { language: "javascript" })).stdout, "2\n");
    assert.equal((await client.execute("exit 3")).exitCode, 3);
  });

  test("streams output to callbacks and async iterators, and aborts", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const result = await client.execute("echo one; echo two >&2; echo three", {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    });
    assert.equal(out.join(""), "one\nthree\n");
    assert.equal(err.join(""), "two\n");
    assert.equal(result.exitCode, 0);
    const types: string[] = [];
    let text = "";
    const odd = await client.execute({ code: "print('a\\u2028b\\u2029c')", language: "python", onStdout: () => {} });
    assert.equal(odd.stdout, "a\u2028b\u2029c\n");
    for await (const event of client.stream({ code: "print('hi')", language: "python" })) {
      types.push(event.type);
      if (event.type === "stdout") text += event.data;
    }
    assert.equal(text, "hi\n");
    assert.equal(types.at(-1), "exit");
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    const started = Date.now();
    await assert.rejects(client.execute("sleep 20", { onStdout: () => {}, signal: controller.signal }));
    assert.ok(Date.now() - started < 10_000, "the abort ended the call");
  });

  test("errors carry the API's code", async () => {
    const stranger = new FaaSClient({ baseUrl: server.url, apiKey: "faas_nope" });
    await assert.rejects(stranger.execute("true"), (e: unknown) => {
      assert.ok(e instanceof AuthenticationError);
      assert.equal(e.status, 401);
      assert.equal(e.code, "unauthorized");
      return true;
    });
    await assert.rejects(client.executions.get("ex_missing"), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.equal(e.code, "not_found");
      assert.ok(e.requestId);
      return true;
    });
    await assert.rejects(client.execute("true", { timeoutMs: 0 }), ValidationError);
    await assert.rejects(client.execute("true", { network: true }), (e: unknown) => {
      assert.ok(e instanceof NotSupportedError);
      assert.equal(e.status, 501);
      return true;
    });
    const slow = new FaaSClient({ baseUrl: server.url, apiKey: await server.key("ts-slow", "tiny"), maxRetries: 0 });
    // A burst: the bucket (1 request, 1 a second) runs dry within a few calls.
    const burst = async () => {
      for (let i = 0; i < 5; i++) await slow.usage.current();
    };
    await assert.rejects(burst(), (e: unknown) => {
      assert.ok(e instanceof RateLimitError);
      assert.equal(e.status, 429);
      assert.ok(e.retryAfter !== undefined);
      return true;
    });
    assert.throws(() => client.stream({}), TypeError);
    // An error inside a stream is the same error class as an answer.
    await assert.rejects(client.execute("true", { network: true, onStdout: () => {} }), NotSupportedError);
    assert.ok(!inspect(client, { depth: 6 }).includes(key), "the key never shows in a printed client");
  });

  test("instances: exec, files, ports, ssh, processes, snapshots and branches", async () => {
    const instance = await client.instances.create({ metadata: { suite: "ts" } });
    try {
      assert.equal(instance.status, "running");
      await instance.files.write("/home/user/notes.txt", "kept\n");
      assert.equal(await instance.files.readText("/home/user/notes.txt"), "kept\n");
      assert.ok((await instance.files.list("/home/user")).some((e) => e.name === "notes.txt"));
      assert.equal((await instance.exec("cat notes.txt", { workdir: "/home/user" })).stdout, "kept\n");
      const listed = await client.instances.list({ metadata: { suite: "ts" } });
      assert.deepEqual(listed.map((i) => i.id), [instance.id]);

      await instance.files.write("/home/user/site/index.html", "<p>hi</p>");
      await instance.spawn("cd /home/user/site && exec python3 -m http.server 8000 --bind 127.0.0.1");
      let body = "";
      for (let i = 0; i < 100 && body !== "<p>hi</p>"; i++) {
        const r = await fetch(instance.portUrl(8000, "index.html"), {
          headers: { authorization: `Bearer ${key}` },
        });
        body = r.status === 200 ? await r.text() : "";
        if (!body) await new Promise((ok) => setTimeout(ok, 100));
      }
      assert.equal(body, "<p>hi</p>");
      assert.match((await instance.ssh()).command, /^ssh /);
      const sleeper = await instance.spawn("sleep 30");
      await instance.kill(sleeper.id, "SIGTERM");
      const ended = await instance.wait(sleeper.id, { timeoutMs: 10_000 });
      assert.equal(ended.result?.signal, "SIGTERM");
      assert.match(await instance.expose(8000), /\/p\//);
      await instance.unexpose(8000);

      const snapshot = await instance.snapshot({ name: "ts" });
      assert.equal((await client.snapshots.get(snapshot.id)).kind, "memory");
      assert.ok((await client.snapshots.list()).some((s) => s.id === snapshot.id));
      const copy = await client.snapshots.restore(snapshot.id);
      assert.equal((await copy.exec("cat /home/user/notes.txt")).stdout, "kept\n");
      await copy.delete();
      assert.ok(Array.isArray((await client.snapshots.tree(snapshot.id)).instances));
      const branches = await client.snapshots.branch(snapshot.id, 2);
      assert.equal(branches.length, 2);
      for (const branch of branches) {
        assert.equal((await branch.exec("cat /home/user/notes.txt")).stdout, "kept\n");
        await branch.delete();
      }
      await client.snapshots.delete(snapshot.id);
      assert.equal((await instance.stop()).status, "stopped");
      assert.equal((await instance.start()).status, "running");
    } finally {
      await instance.delete();
    }
    await assert.rejects(client.instances.get(instance.id), NotFoundError);
  });

  test("instance contexts, tar archives and streamed execs", async () => {
    const instance = await client.instances.create();
    try {
      const context = await instance.createContext("javascript");
      await instance.exec({ code: "globalThis.n = 20", language: "javascript", contextId: String(context.id) });
      const doubled = await instance.exec({ code: "console.log(n * 2)", language: "javascript", contextId: String(context.id) });
      assert.equal(doubled.stdout, "40\n");
      assert.deepEqual((await instance.contexts()).map((c) => c.id), [context.id]);
      await instance.deleteContext(String(context.id));
      await instance.exec("mkdir -p /home/user/tree/dir && echo packed > /home/user/tree/dir/f");
      const archive = await instance.files.downloadTar("/home/user/tree");
      assert.ok(archive.length >= 512);
      await instance.files.uploadTar("/home/user/copy", archive);
      assert.equal(await instance.files.readText("/home/user/copy/dir/f"), "packed\n");
      const lines: string[] = [];
      const streamed = await instance.exec("echo a; echo b", { onStdout: (d) => lines.push(d) });
      assert.equal(lines.join(""), "a\nb\n");
      assert.equal(streamed.exitCode, 0);
    } finally {
      await instance.delete();
    }
  });

  test("contexts, pools, keys, quotas and usage", async () => {
    const context = await client.contexts.create("python");
    assert.ok((await client.contexts.list()).some((c) => c.id === context.id));
    await context.run("total = 40");
    assert.equal((await context.run("print(total + 2)")).stdout, "42\n");
    await context.delete();
    const pool = await client.pools.prewarm(1);
    assert.ok((pool.target as number) >= 1);
    const admin = new FaaSClient({ baseUrl: server.url, apiKey: ADMIN_KEY });
    const created = await admin.keys.create("ts-quota");
    assert.ok((await admin.keys.list("ts-quota")).some((k) => k.id === created.id));
    const status = await admin.quotas.set("ts-quota", { maxInstances: 0 });
    const tenant = new FaaSClient({ baseUrl: server.url, apiKey: String(created.key) });
    assert.equal((await tenant.quotas.get()).tenant, "ts-quota");
    assert.equal((status.quotas as { maxInstances: number }).maxInstances, 0);
    await admin.keys.revoke(String(created.id));
    const usage = await client.usage.current();
    assert.equal(usage.tenant, "ts-tests");
    assert.ok(usage.usage.records >= 1);
    assert.equal(usage.month.length, 7);
    assert.ok("total" in (await client.usage.report({ groupBy: "mode" })));
    assert.ok(((await client.usage.records({ limit: 1 })).records as unknown[]).length === 1);
  });
});
