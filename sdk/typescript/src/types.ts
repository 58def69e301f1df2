/** The API's answers, in camelCase. Each also keeps the server's JSON in `raw`. */

export type Json = Record<string, unknown>;

/** A string for `/bin/sh -c`, or an argv array run as is. */
export type Command = string | string[];

export type Mode = "ephemeral" | "cached" | "checkpointed" | "branched";

/** Options of a run; the server's defaults apply to what is left out. */
export interface RunOptions {
  code?: string;
  language?: string;
  mode?: Mode;
  image?: string;
  stdin?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  memoryMb?: number;
  cpu?: number;
  pids?: number;
  workdir?: string;
  contextId?: string;
  reuse?: boolean;
  reuseKey?: string;
  checkpointAfter?: boolean;
  snapshotId?: string;
  parentSnapshot?: string;
  count?: number;
  network?: boolean;
  /** Output as it is produced (the run is streamed). */
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** Cancels the request (a streamed run is killed). */
  signal?: AbortSignal;
}

/** Options of a run inside an instance (its image and limits are the instance's). */
export interface InstanceExecOptions {
  code?: string;
  language?: string;
  stdin?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  workdir?: string;
  contextId?: string;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  signal?: AbortSignal;
}

export interface Usage {
  cpuMs: number;
  peakMemoryBytes: number;
}

export interface ExecutionResult {
  id: string;
  /** `exited`, `timeout`, `oom` or `signaled`. */
  status: string;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
  usage: Usage;
  mode: string;
  image: string;
  createdAtMs: number;
  snapshotId?: string | null;
  branches: ExecutionResult[];
  raw: Json;
}

export interface InstanceInfo {
  id: string;
  status: string;
  image: string;
  limits: { memoryMb: number; cpu: number; pids: number; diskMb: number };
  env: Record<string, string>;
  metadata: Record<string, string>;
  createdAtMs: number;
  snapshotId?: string | null;
  error?: string | null;
  raw: Json;
}

export interface CreateInstanceOptions {
  image?: string;
  memoryMb?: number;
  cpu?: number;
  pids?: number;
  diskMb?: number;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  ttlSeconds?: number;
  idleTimeoutSeconds?: number;
  onTimeout?: "stop" | "delete";
  signal?: AbortSignal;
}

export interface Process {
  id: string;
  argv: string[];
  status: string;
  startedAtMs: number;
  /** Once it ended. */
  result?: ExecutionResult | null;
}

export interface Snapshot {
  id: string;
  kind: "memory" | "filesystem" | string;
  instanceId: string;
  name?: string | null;
  parentId?: string | null;
  sizeBytes: number;
  /** Set moments after capture, once the snapshot is in the blob store. */
  storedBytes?: number | null;
  createdAtMs: number;
  metadata: Record<string, string>;
  raw: Json;
}

export interface FileEntry {
  name: string;
  kind: string;
  size: number;
  mode: number;
  modifiedMs: number;
}

export interface SshAccess {
  host: string;
  port: number;
  user: string;
  keyId: string;
  privateKey: string;
  publicKey: string;
  hostPublicKey: string;
  command: string;
}

export interface UsageSummary {
  records: number;
  cpuSeconds: number;
  wallSeconds: number;
  memoryGbSeconds: number;
  storageGbMonths: number;
  egressBytes: number;
  listMicros: number;
  discountMicros: number;
  costMicros: number;
}

export interface CurrentUsage {
  tenant: string;
  month: string;
  usage: UsageSummary;
  discountTier: { fromMicros: number; percent: number };
  spendCapMicros: number;
}

/** One event of a streamed run. */
export type StreamEvent =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "exit"; result: ExecutionResult }
  | { type: "error"; code: string; message: string };
