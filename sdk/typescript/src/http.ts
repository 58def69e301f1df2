/** The transport: fetch with the key, JSON both ways, errors, retries of idempotent
 * requests, Server-Sent Events. Works wherever `fetch` does (Node 20, browsers). */

import { ConnectionError, FaaSError, errorFor } from "./errors.js";
import type { Json } from "./types.js";

export interface ClientOptions {
  /** Default: `http://127.0.0.1:8080`. */
  baseUrl?: string;
  apiKey?: string;
  /** Per request, in milliseconds (default 330 s: the longest run and then some). */
  timeoutMs?: number;
  /** Retries of idempotent requests (GET, PUT, DELETE) on a broken connection or a
   * 429/502/503/504 answer; others are never retried. Default 2. */
  maxRetries?: number;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
}

const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]);
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
/** Maps whose keys are the caller's own: never renamed. */
const VERBATIM = new Set(["env", "metadata"]);
/** Options of the SDK itself, never sent. */
const LOCAL = new Set(["onStdout", "onStderr", "signal"]);

const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const camelKey = (key: string) => key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** A request body from camelCase options: snake_case keys, nothing undefined. */
export function toWire(options: object): Json {
  const out: Json = {};
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || LOCAL.has(key)) continue;
    out[snake(key)] = value;
  }
  return out;
}

/** An answer with camelCase keys (the caller's own maps left as they are). */
export function fromWire(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value === null || typeof value !== "object") return value;
  const out: Json = {};
  for (const [key, inner] of Object.entries(value as Json)) {
    out[camelKey(key)] = VERBATIM.has(key) ? inner : fromWire(inner);
  }
  return out;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A path segment (an id, a tenant) percent-encoded: never read as `/` or `..`. */
export const segment = (value: string) => encodeURIComponent(value);

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  json?: unknown;
  body?: BodyInit;
  signal?: AbortSignal;
  /** For streams: no overall timeout. */
  stream?: boolean;
}

export class Transport {
  readonly baseUrl: string;
  /** Private: never printed with the client. */
  readonly #apiKey: string | undefined;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process
      ?.env;
    this.baseUrl = (options.baseUrl ?? env?.FAAS_URL ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
    this.#apiKey = options.apiKey ?? env?.FAAS_API_KEY;
    this.timeoutMs = options.timeoutMs ?? 330_000;
    this.maxRetries = options.maxRetries ?? 2;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  url(path: string, query?: RequestOptions["query"]): string {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  /** Sends a request; answers the response, or throws the error it carries. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    let body = options.body;
    if (options.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    for (let attempt = 0; ; attempt++) {
      const timeout = options.stream ? undefined : AbortSignal.timeout(this.timeoutMs);
      const signals = [options.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
      const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
      let response: Response;
      try {
        response = await this.fetchImpl(this.url(path, options.query), { method, headers, body, signal });
      } catch (e) {
        if (options.signal?.aborted) throw e;
        // A timeout is never retried: the caller's time is spent.
        if (timeout?.aborted) {
          throw new ConnectionError(`${method} ${path}: timed out`, { code: "timeout" });
        }
        if (this.retries(method, attempt, undefined)) {
          await sleep(backoff(attempt, undefined), options.signal);
          continue;
        }
        throw new ConnectionError(`${method} ${path}: ${(e as Error).message}`, { code: "connection" });
      }
      if (response.status >= 400 && this.retries(method, attempt, response.status)) {
        await response.body?.cancel();
        await sleep(backoff(attempt, retryAfter(response)), options.signal);
        continue;
      }
      // A DELETE sent again that finds nothing: the first one did it (its answer was lost).
      if (method === "DELETE" && attempt > 0 && response.status === 404) return response;
      if (response.status >= 400) throw await errorOf(response);
      return response;
    }
  }

  async json(method: string, path: string, options: RequestOptions = {}): Promise<Json> {
    const response = await this.request(method, path, options);
    if (response.status === 204) return {};
    return (await response.json()) as Json;
  }

  /** The JSON objects of a Server-Sent Events answer, one per event. */
  async *events(path: string, json: unknown, signal?: AbortSignal): AsyncGenerator<Json> {
    const response = await this.request("POST", path, { json, signal, stream: true });
    if (!response.body) throw new FaaSError("the stream has no body", { code: "bad_stream" });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          if (line === "") {
            if (data.length) yield parseEvent(data.join("\n"));
            data = [];
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
          }
        }
      }
      if (data.length) yield parseEvent(data.join("\n"));
    } finally {
      await reader.cancel().catch(() => undefined);
    }
  }

  private retries(method: string, attempt: number, status: number | undefined): boolean {
    if (attempt >= this.maxRetries || !IDEMPOTENT.has(method)) return false;
    return status === undefined || RETRY_STATUSES.has(status);
  }
}

function parseEvent(text: string): Json {
  try {
    const value: unknown = JSON.parse(text);
    if (value && typeof value === "object") return value as Json;
  } catch {
    // fall through
  }
  throw new FaaSError(`malformed stream event: ${text.slice(0, 200)}`, { code: "bad_stream" });
}

function retryAfter(response: Response): number | undefined {
  const value = response.headers.get("retry-after");
  const seconds = value === null ? NaN : Number(value);
  return Number.isFinite(seconds) ? seconds : undefined;
}

function backoff(attempt: number, after: number | undefined): number {
  if (after !== undefined) return Math.min(Math.max(after, 0), 30) * 1000;
  return Math.min(250 * 2 ** attempt, 4000);
}

async function errorOf(response: Response): Promise<FaaSError> {
  let code = "error";
  let message = response.statusText || `HTTP ${response.status}`;
  const text = await response.text().catch(() => "");
  try {
    const detail = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    code = detail?.code ?? code;
    message = detail?.message ?? message;
  } catch {
    if (text.trim()) message = text.trim().slice(0, 500);
  }
  return errorFor(
    response.status,
    code,
    message,
    response.headers.get("x-request-id") ?? undefined,
    retryAfter(response),
  );
}
