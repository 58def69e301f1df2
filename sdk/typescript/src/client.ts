/** `new FaaSClient({ baseUrl, apiKey })`: runs, instances, snapshots, contexts, pools, keys,
 * quotas and usage. Every method takes an optional `AbortSignal`. */

import { FaaSError, NotFoundError, streamError } from "./errors.js";
import { type ClientOptions, Transport, fromWire, segment, toWire } from "./http.js";
import type {
  Command,
  CreateInstanceOptions,
  CurrentUsage,
  ExecutionResult,
  FileEntry,
  InstanceExecOptions,
  InstanceInfo,
  Json,
  Process,
  RunOptions,
  Snapshot,
  SshAccess,
  StreamEvent,
} from "./types.js";

type Signal = { signal?: AbortSignal };

const withRaw = <T>(json: Json): T => ({ ...(fromWire(json) as object), raw: json }) as T;

function result(json: Json): ExecutionResult {
  const r = withRaw<ExecutionResult>(json);
  const branches = Array.isArray(json.branches) ? (json.branches as Json[]) : [];
  return { ...r, branches: branches.map(result) };
}

function event(json: Json): StreamEvent | undefined {
  switch (json.type) {
    case "exit":
      return { type: "exit", result: result(json) };
    case "error": {
      const error = (json.error ?? {}) as { code?: string; message?: string };
      return { type: "error", code: error.code ?? "internal", message: error.message ?? "" };
    }
    case "stderr":
      return { type: "stderr", data: String(json.data ?? "") };
    case "stdout":
      return { type: "stdout", data: String(json.data ?? "") };
    default:
      // An event a newer server sends: skipped.
      return undefined;
  }
}

function toProcess(json: Json): Process {
  const p = fromWire(json) as Process;
  return { ...p, result: json.result && typeof json.result === "object" ? result(json.result as Json) : null };
}

/** `(command, options)` or `(options)`: the command, if any, and the options. */
function split<O extends object>(command: Command | O, options: O): [Command | undefined, O] {
  return typeof command === "string" || Array.isArray(command)
    ? [command, options]
    : [undefined, { ...command, ...options }];
}

/** The body of a run: a command, or `code` + `language`. */
function runBody(command: Command | undefined, options: RunOptions | InstanceExecOptions): Json {
  if (command !== undefined && options.code !== undefined) {
    throw new TypeError("give a command or code, not both");
  }
  if (command === undefined && options.code === undefined) {
    throw new TypeError("give a command (a string or an argv array) or code");
  }
  return toWire({ command, ...options });
}

async function follow(events: AsyncIterable<StreamEvent>, options: RunOptions | InstanceExecOptions): Promise<ExecutionResult> {
  for await (const e of events) {
    if (e.type === "stdout") options.onStdout?.(e.data);
    else if (e.type === "stderr") options.onStderr?.(e.data);
    else if (e.type === "exit") return e.result;
    else throw streamError(e.code, e.message);
  }
  throw new FaaSError("the stream ended without a result", { code: "bad_stream" });
}

export class FaaSClient {
  readonly http: Transport;
  readonly executions: Executions;
  readonly instances: Instances;
  readonly snapshots: Snapshots;
  readonly contexts: Contexts;
  readonly pools: Pools;
  readonly keys: Keys;
  readonly quotas: Quotas;
  readonly usage: UsageApi;

  constructor(options: ClientOptions = {}) {
    this.http = new Transport(options);
    this.executions = new Executions(this);
    this.instances = new Instances(this);
    this.snapshots = new Snapshots(this);
    this.contexts = new Contexts(this);
    this.pools = new Pools(this);
    this.keys = new Keys(this);
    this.quotas = new Quotas(this);
    this.usage = new UsageApi(this);
  }

  get baseUrl(): string {
    return this.http.baseUrl;
  }

  /**
   * Runs a command (`client.execute("echo hi")`, or an argv array) or code
   * (`client.execute({ code, language, mode })`). With `onStdout`/`onStderr` the output
   * is streamed to them as it is produced.
   */
  async execute(command: Command | RunOptions, options: RunOptions = {}): Promise<ExecutionResult> {
    const [cmd, opts] = split(command, options);
    const body = runBody(cmd, opts);
    if (opts.onStdout || opts.onStderr) {
      return follow(this.streamBody("/api/v1/execute/stream", body, opts.signal), opts);
    }
    return result(await this.http.json("POST", "/api/v1/execute", { json: body, signal: opts.signal }));
  }

  /** Runs `code` in `language` (python by default). */
  runCode(code: string, options: RunOptions = {}): Promise<ExecutionResult> {
    return this.execute({ language: "python", ...options, code });
  }

  /** `for await (const event of client.stream("cmd"))`: output, then `exit`. Aborting the
   * signal (or leaving the loop) kills the run. */
  stream(command: Command | RunOptions, options: RunOptions = {}): AsyncGenerator<StreamEvent> {
    const [cmd, opts] = split(command, options);
    return this.streamBody("/api/v1/execute/stream", runBody(cmd, opts), opts.signal);
  }

  /** @internal */
  async *streamBody(path: string, body: Json, signal?: AbortSignal): AsyncGenerator<StreamEvent> {
    for await (const json of this.http.events(path, body, signal)) {
      const e = event(json);
      if (e) yield e;
    }
  }

  async health(options: Signal = {}): Promise<Json> {
    return this.http.json("GET", "/health", options);
  }
}

class Executions {
  constructor(private readonly c: FaaSClient) {}

  async get(id: string, options: Signal = {}): Promise<ExecutionResult> {
    return result(await this.c.http.json("GET", `/api/v1/executions/${segment(id)}`, options));
  }
}

/** Files of one instance; paths resolve inside it, as its user. */
export class Files {
  constructor(private readonly i: Instance) {}

  async write(path: string, data: string | Uint8Array, options: Signal = {}): Promise<void> {
    await this.i.client.http.request("PUT", this.i.path("/files"), {
      query: { path },
      body: typeof data === "string" ? data : new Blob([data as Uint8Array<ArrayBuffer>]),
      signal: options.signal,
    });
  }

  async read(path: string, options: Signal = {}): Promise<Uint8Array> {
    const r = await this.i.client.http.request("GET", this.i.path("/files"), { query: { path }, ...options });
    return new Uint8Array(await r.arrayBuffer());
  }

  async readText(path: string, options: Signal = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  async list(path = "/home/user", options: Signal = {}): Promise<FileEntry[]> {
    const answer = await this.i.client.http.json("GET", this.i.path("/files/list"), { query: { path }, ...options });
    return (fromWire(answer.entries ?? []) as FileEntry[]);
  }

  async delete(path: string, options: { recursive?: boolean } & Signal = {}): Promise<void> {
    const query = { path, recursive: options.recursive ?? false };
    await this.i.client.http.request("DELETE", this.i.path("/files"), { query, signal: options.signal });
  }

  /** Extracts a tar archive into `path` (created if missing), as the instance's user. */
  async uploadTar(path: string, archive: Uint8Array, options: Signal = {}): Promise<void> {
    await this.i.client.http.request("PUT", this.i.path("/files/archive"), {
      query: { path },
      body: new Blob([archive as Uint8Array<ArrayBuffer>]),
      signal: options.signal,
    });
  }

  /** The tree under `path` as a tar archive. */
  async downloadTar(path: string, options: Signal = {}): Promise<Uint8Array> {
    const r = await this.i.client.http.request("GET", this.i.path("/files/archive"), { query: { path }, ...options });
    return new Uint8Array(await r.arrayBuffer());
  }
}

/** A persistent instance. `await using` (or `try/finally` with `delete()`) cleans it up. */
export class Instance {
  info: InstanceInfo;
  readonly files: Files;

  constructor(readonly client: FaaSClient, json: Json) {
    this.info = withRaw<InstanceInfo>(json);
    this.files = new Files(this);
  }

  get id(): string {
    return this.info.id;
  }

  get status(): string {
    return this.info.status;
  }

  /** @internal */
  path(suffix = ""): string {
    return `/api/v1/instances/${segment(this.id)}${suffix}`;
  }

  private update(json: Json): this {
    this.info = withRaw<InstanceInfo>(json);
    return this;
  }

  async refresh(options: Signal = {}): Promise<this> {
    return this.update(await this.client.http.json("GET", this.path(), options));
  }

  /** Runs a command or code in the instance; files and processes persist. */
  async exec(command: Command | InstanceExecOptions, options: InstanceExecOptions = {}): Promise<ExecutionResult> {
    const [cmd, opts] = split(command, options);
    const body = runBody(cmd, opts);
    if (opts.onStdout || opts.onStderr) {
      return follow(this.client.streamBody(this.path("/exec/stream"), body, opts.signal), opts);
    }
    return result(await this.client.http.json("POST", this.path("/exec"), { json: body, signal: opts.signal }));
  }

  /** Starts a background process; it runs on between execs. */
  async spawn(command: Command, options: InstanceExecOptions = {}): Promise<Process> {
    const body = { ...runBody(command, options), background: true };
    return toProcess(await this.client.http.json("POST", this.path("/exec"), { json: body, signal: options.signal }));
  }

  async processes(options: Signal = {}): Promise<Process[]> {
    const answer = await this.client.http.json("GET", this.path("/processes"), options);
    return ((answer.processes ?? []) as Json[]).map(toProcess);
  }

  /** Waits for a background process to end (or `timeoutMs`); its state then. */
  async wait(processId: string, options: { timeoutMs?: number } & Signal = {}): Promise<Process> {
    const path = this.path(`/processes/${segment(processId)}/wait`);
    const answer = await this.client.http.json("POST", path, { query: { timeout_ms: options.timeoutMs }, signal: options.signal });
    return toProcess(answer);
  }

  /** Signals a background process (SIGKILL unless `signal` names another). */
  async kill(processId: string, sig?: string | number, options: Signal = {}): Promise<Process> {
    const path = this.path(`/processes/${segment(processId)}/kill`);
    // Sent as is: `signal` is also the name of the SDK's AbortSignal option.
    const body = sig === undefined ? {} : { signal: sig };
    return toProcess(await this.client.http.json("POST", path, { json: body, ...options }));
  }

  /** An interpreter inside the instance whose globals persist (run code in it with
   * `exec({ code, contextId })`); it travels into snapshots and branches. */
  async createContext(language = "python", options: { env?: Record<string, string> } & Signal = {}): Promise<Json> {
    return fromWire(await this.client.http.json("POST", this.path("/contexts"), { json: toWire({ language, ...options }), signal: options.signal })) as Json;
  }

  async contexts(options: Signal = {}): Promise<Json[]> {
    return fromWire((await this.client.http.json("GET", this.path("/contexts"), options)).contexts ?? []) as Json[];
  }

  async deleteContext(contextId: string, options: Signal = {}): Promise<void> {
    await this.client.http.request("DELETE", this.path(`/contexts/${segment(contextId)}`), options);
  }

  /** The URL of `port` inside the instance, through the API (send the API key). */
  portUrl(port: number, path = ""): string {
    return `${this.client.baseUrl}${this.path(`/ports/${port}/`)}${path.replace(/^\/+/, "")}`;
  }

  /** A public URL for `port`, reachable without the API key (revocable). */
  async expose(port: number, options: Signal = {}): Promise<string> {
    const answer = await this.client.http.json("POST", this.path("/public-ports"), { json: { port }, ...options });
    return String(answer.url ?? "");
  }

  async unexpose(port: number, options: Signal = {}): Promise<void> {
    await this.client.http.request("DELETE", this.path(`/public-ports/${port}`), options);
  }

  /** A fresh SSH key pair for this instance and the command to log in. */
  async ssh(options: Signal = {}): Promise<SshAccess> {
    return fromWire(await this.client.http.json("GET", this.path("/ssh"), options)) as SshAccess;
  }

  /** Captures the instance: with its processes while it runs, its files when stopped. */
  async snapshot(options: { name?: string; stop?: boolean; metadata?: Record<string, string> } & Signal = {}): Promise<Snapshot> {
    const body = toWire({ instanceId: this.id, name: options.name, stop: options.stop, metadata: options.metadata });
    return withRaw<Snapshot>(await this.client.http.json("POST", "/api/v1/snapshots", { json: body, signal: options.signal }));
  }

  async stop(options: Signal = {}): Promise<this> {
    return this.update(await this.client.http.json("POST", this.path("/stop"), options));
  }

  async start(options: Signal = {}): Promise<this> {
    return this.update(await this.client.http.json("POST", this.path("/start"), options));
  }

  async delete(options: Signal = {}): Promise<void> {
    await this.client.http.request("DELETE", this.path(), options);
  }

  /** For `await using instance = await client.instances.create()`. */
  async [Symbol.asyncDispose ?? Symbol.for("Symbol.asyncDispose")](): Promise<void> {
    await this.delete().catch((e: unknown) => {
      if (!(e instanceof NotFoundError)) throw e;
    });
  }
}

class Instances {
  constructor(private readonly c: FaaSClient) {}

  /** A new running instance. */
  async create(options: CreateInstanceOptions = {}): Promise<Instance> {
    const json = await this.c.http.json("POST", "/api/v1/instances", { json: toWire(options), signal: options.signal });
    return new Instance(this.c, json);
  }

  async get(id: string, options: Signal = {}): Promise<Instance> {
    return new Instance(this.c, await this.c.http.json("GET", `/api/v1/instances/${segment(id)}`, options));
  }

  async list(options: { status?: string; metadata?: Record<string, string> } & Signal = {}): Promise<Instance[]> {
    const query: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.metadata ?? {})) query[`metadata.${k}`] = v;
    if (options.status) query.status = options.status;
    const answer = await this.c.http.json("GET", "/api/v1/instances", { query, signal: options.signal });
    return ((answer.instances ?? []) as Json[]).map((i) => new Instance(this.c, i));
  }
}

class Snapshots {
  constructor(private readonly c: FaaSClient) {}

  async create(instanceId: string, options: { name?: string; stop?: boolean } & Signal = {}): Promise<Snapshot> {
    const body = toWire({ instanceId, name: options.name, stop: options.stop });
    return withRaw<Snapshot>(await this.c.http.json("POST", "/api/v1/snapshots", { json: body, signal: options.signal }));
  }

  async get(id: string, options: Signal = {}): Promise<Snapshot> {
    return withRaw<Snapshot>(await this.c.http.json("GET", `/api/v1/snapshots/${segment(id)}`, options));
  }

  async list(options: Signal = {}): Promise<Snapshot[]> {
    const answer = await this.c.http.json("GET", "/api/v1/snapshots", options);
    return ((answer.snapshots ?? []) as Json[]).map((s) => withRaw<Snapshot>(s));
  }

  async delete(id: string, options: Signal = {}): Promise<void> {
    await this.c.http.request("DELETE", `/api/v1/snapshots/${segment(id)}`, options);
  }

  /** A new running instance in the snapshot's state. */
  async restore(id: string, options: Signal = {}): Promise<Instance> {
    return new Instance(this.c, await this.c.http.json("POST", `/api/v1/snapshots/${segment(id)}/restore`, { json: {}, ...options }));
  }

  /** `count` independent running instances from one snapshot, all or nothing. */
  async branch(snapshotId: string, count: number, options: Signal = {}): Promise<Instance[]> {
    const answer = await this.c.http.json("POST", "/api/v1/branches", { json: { snapshot_id: snapshotId, count }, ...options });
    return ((answer.instances ?? []) as Json[]).map((i) => new Instance(this.c, i));
  }

  /** A filesystem snapshot with the base's files and the instances' changes. */
  async merge(baseSnapshotId: string, instanceIds: string[], options: { name?: string } & Signal = {}): Promise<Json> {
    const body = toWire({ baseSnapshotId, instanceIds, name: options.name });
    return fromWire(await this.c.http.json("POST", "/api/v1/branches/merge", { json: body, signal: options.signal })) as Json;
  }

  async tree(id: string, options: Signal = {}): Promise<Json> {
    return fromWire(await this.c.http.json("GET", `/api/v1/snapshots/${segment(id)}/tree`, options)) as Json;
  }
}

/** A language interpreter whose globals persist between runs. */
export class Context {
  constructor(private readonly c: FaaSClient, readonly id: string, readonly language: string) {}

  run(code: string, options: RunOptions = {}): Promise<ExecutionResult> {
    return this.c.execute({ ...options, code, language: this.language, contextId: this.id });
  }

  async delete(options: Signal = {}): Promise<void> {
    await this.c.http.request("DELETE", `/api/v1/contexts/${segment(this.id)}`, options);
  }
}

class Contexts {
  constructor(private readonly c: FaaSClient) {}

  async create(language = "python", options: { image?: string; env?: Record<string, string>; memoryMb?: number } & Signal = {}): Promise<Context> {
    const json = await this.c.http.json("POST", "/api/v1/contexts", { json: toWire({ language, ...options }), signal: options.signal });
    return new Context(this.c, String(json.id), String(json.language));
  }

  async list(options: Signal = {}): Promise<Context[]> {
    const answer = await this.c.http.json("GET", "/api/v1/contexts", options);
    return ((answer.contexts ?? []) as Json[]).map((j) => new Context(this.c, String(j.id), String(j.language)));
  }
}

class Pools {
  constructor(private readonly c: FaaSClient) {}

  async prewarm(count: number, options: { image?: string; memoryMb?: number; cpu?: number } & Signal = {}): Promise<Json> {
    return fromWire(await this.c.http.json("POST", "/api/v1/prewarm", { json: toWire({ count, ...options }), signal: options.signal })) as Json;
  }

  async list(options: Signal = {}): Promise<Json[]> {
    return fromWire((await this.c.http.json("GET", "/api/v1/pools", options)).pools ?? []) as Json[];
  }
}

/** API keys (admin keys only). */
class Keys {
  constructor(private readonly c: FaaSClient) {}

  /** A new key; its secret (`key`) is in this answer only. */
  async create(tenant: string, options: { name?: string; admin?: boolean; rateTier?: string } & Signal = {}): Promise<Json> {
    const body = toWire({ tenant, name: options.name, role: options.admin ? "admin" : undefined, rateTier: options.rateTier });
    return fromWire(await this.c.http.json("POST", "/api/v1/keys", { json: body, signal: options.signal })) as Json;
  }

  async list(tenant?: string, options: Signal = {}): Promise<Json[]> {
    return fromWire((await this.c.http.json("GET", "/api/v1/keys", { query: { tenant }, ...options })).keys ?? []) as Json[];
  }

  async revoke(id: string, options: Signal = {}): Promise<void> {
    await this.c.http.request("DELETE", `/api/v1/keys/${segment(id)}`, options);
  }
}

class Quotas {
  constructor(private readonly c: FaaSClient) {}

  async get(tenant?: string, options: Signal = {}): Promise<Json> {
    return fromWire(await this.c.http.json("GET", "/api/v1/quotas", { query: { tenant }, ...options })) as Json;
  }

  /** Replaces a tenant's overrides (admin); left out: the server's default. */
  async set(
    tenant: string,
    quotas: { maxConcurrentSandboxes?: number; maxInstances?: number; maxMemoryMb?: number; maxSnapshotStorageMb?: number; monthlySpendCapMicros?: number },
    options: Signal = {},
  ): Promise<Json> {
    return fromWire(await this.c.http.json("PUT", `/api/v1/tenants/${segment(tenant)}/quotas`, { json: toWire(quotas), ...options })) as Json;
  }
}

class UsageApi {
  constructor(private readonly c: FaaSClient) {}

  /** This calendar month so far: usage, cost (micro-units), discount tier. */
  async current(options: Signal = {}): Promise<CurrentUsage> {
    return fromWire(await this.c.http.json("GET", "/api/v1/usage/current", options)) as CurrentUsage;
  }

  /** Usage in a period (epoch ms, RFC 3339 or YYYY-MM-DD), by `day`, `mode` or `image`. */
  async report(options: { from?: string; to?: string; groupBy?: "day" | "mode" | "image" } & Signal = {}): Promise<Json> {
    const query = { from: options.from, to: options.to, group_by: options.groupBy };
    return fromWire(await this.c.http.json("GET", "/api/v1/usage", { query, signal: options.signal })) as Json;
  }

  /** Single charges in the order they were made; page on with `after` = the last id. */
  async records(options: { from?: string; to?: string; after?: string; limit?: number } & Signal = {}): Promise<Json> {
    const query = { from: options.from, to: options.to, after: options.after, limit: options.limit };
    return fromWire(await this.c.http.json("GET", "/api/v1/usage/records", { query, signal: options.signal })) as Json;
  }
}
