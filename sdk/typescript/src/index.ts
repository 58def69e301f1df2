export { Context, FaaSClient, Files, Instance } from "./client.js";
export * from "./errors.js";
export type { ClientOptions } from "./http.js";
export type * from "./types.js";
