/** A real faas server for the tests (root needed), started once per test file. */

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export const ADMIN_KEY = "faas_ts_sdk_test_admin_key_0123456789abcdef";
const ROOT = resolve(import.meta.dirname, "../../../..");
let started = 0;

export interface TestServer {
  url: string;
  key(tenant: string, rateTier?: string): Promise<string>;
  stop(): Promise<void>;
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** A server; `topLevel` is TOML placed before the config's tables (e.g. cors_origins). */
export async function startServer(topLevel = ""): Promise<TestServer> {
  const binary = process.env.FAAS_BIN ?? join(ROOT, "target/debug/faas");
  const agent = process.env.FAAS_AGENT ?? join(ROOT, "target/debug/faas-agent");
  const base = mkdtempSync(join(tmpdir(), "faas-ts-sdk-"));
  const config = join(base, "config.toml");
  writeFileSync(
    config,
    `listen = "127.0.0.1:0"\ndata_dir = "${base}/data"\nrun_dir = "${base}/run"\n` +
      `cgroup_parent = "faas-ts-${process.pid}-${++started}"\nagent_path = "${agent}"\n${topLevel}\n` +
      `[ssh]\nlisten = "127.0.0.1:0"\n` +
      `[rate_limits.tiers.default]\nper_second = 200\nburst = 400\n` +
      `[rate_limits.tiers.admin]\nper_second = 200\nburst = 400\n` +
      `[rate_limits.tiers.tiny]\nper_second = 1\nburst = 1\n`,
  );
  const child: ChildProcess = spawn(binary, ["serve", "--config", config], {
    env: { ...process.env, FAAS_API_KEY: ADMIN_KEY },
    stdio: ["ignore", "pipe", "inherit"],
  });
  // However the test process ends, the server ends with it.
  process.on("exit", () => child.kill("SIGKILL"));
  const url = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("the server did not start in 30 s")), 30_000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const m = /^faas listening on (\S+)/.exec(line);
      if (m?.[1]) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.on("exit", (code) => fail(new Error(`the server exited (${code})`)));
  });
  return {
    url,
    async key(tenant, rateTier) {
      const r = await fetch(`${url}/api/v1/keys`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ tenant, ...(rateTier ? { rate_tier: rateTier } : {}) }),
      });
      if (r.status !== 201) throw new Error(`key: ${r.status} ${await r.text()}`);
      return ((await r.json()) as { key: string }).key;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((ok) => child.on("exit", ok));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(base, { recursive: true, force: true });
    },
  };
}
