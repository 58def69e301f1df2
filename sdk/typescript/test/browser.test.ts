/** The SDK in a real browser (headless Chromium): the built ESM bundle loaded by a page on
 * an origin the server allows (CORS), calling a real server. */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, normalize, resolve } from "node:path";
import { test } from "node:test";

import { ADMIN_KEY, isRoot, startServer } from "./server.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const DIST = resolve(import.meta.dirname, "../../dist");

const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import { FaaSClient, NotFoundError } from "/dist/index.js";
const params = new URLSearchParams(location.search);
const client = new FaaSClient({ baseUrl: params.get("api"), apiKey: params.get("key") });
const out = {};
try {
  out.hello = (await client.execute("echo 'Hello!'")).stdout;
  let streamed = "";
  for await (const e of client.stream("echo a; echo b")) if (e.type === "stdout") streamed += e.data;
  out.streamed = streamed;
  try { await client.executions.get("ex_missing"); } catch (e) {
    out.notFound = e instanceof NotFoundError;
    out.requestId = typeof e.requestId === "string" && e.requestId.length > 0;
  }
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 300);
  const started = Date.now();
  try { await client.execute("sleep 20", { onStdout() {}, signal: controller.signal }); out.aborted = false; }
  catch { out.aborted = Date.now() - started < 10000; }
} catch (e) { out.error = String(e && e.stack || e); }
await fetch("/result", { method: "POST", body: JSON.stringify(out) });
</script>`;

const skip = !isRoot()
  ? "the SDK tests start a real server: they need root"
  : !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (scripts/test-typescript-sdk.sh installs it)`
    : false;

test("the SDK works in a browser, across origins", { skip, timeout: 120_000 }, async () => {
  let deliver: (body: string) => void = () => {};
  const result = new Promise<string>((ok) => (deliver = ok));
  // The page's own origin: serves the page and the built SDK, and takes the result.
  const web: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://page");
    if (req.method === "POST" && url.pathname === "/result") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        res.end("ok");
        deliver(body);
      });
      return;
    }
    if (url.pathname === "/page.html") {
      res.setHeader("content-type", "text/html");
      return res.end(PAGE);
    }
    const file = normalize(join(DIST, url.pathname.replace(/^\/dist\//, "")));
    if (url.pathname.startsWith("/dist/") && file.startsWith(DIST) && existsSync(file)) {
      res.setHeader("content-type", "text/javascript");
      return res.end(readFileSync(file));
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((ok) => web.listen(0, "127.0.0.1", ok));
  const origin = `http://127.0.0.1:${(web.address() as AddressInfo).port}`;
  const server = await startServer(`cors_origins = ["${origin}"]`);
  const profile = mkdtempSync(join(tmpdir(), "faas-chromium-"));
  const page = `${origin}/page.html?api=${encodeURIComponent(server.url)}&key=${ADMIN_KEY}`;
  const browser = spawn(
    CHROMIUM,
    ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
     "--no-first-run", `--user-data-dir=${profile}`, "--remote-debugging-port=0", page],
    { stdio: "ignore" },
  );
  try {
    const timeout = new Promise<string>((_, fail) =>
      setTimeout(() => fail(new Error("the page reported nothing in 90 s")), 90_000).unref(),
    );
    const out = JSON.parse(await Promise.race([result, timeout])) as Record<string, unknown>;
    assert.equal(out.error, undefined, String(out.error));
    assert.equal(out.hello, "Hello!\n");
    assert.equal(out.streamed, "a\nb\n");
    assert.equal(out.notFound, true);
    assert.equal(out.requestId, true, "the request id header is readable across origins");
    assert.equal(out.aborted, true);
  } finally {
    browser.kill("SIGKILL");
    web.close();
    await server.stop();
    rmSync(profile, { recursive: true, force: true });
  }
});
