/** Every failure the API answers becomes a `FaaSError` carrying its code. */
export class FaaSError extends Error {
  /** The HTTP status, or undefined when the server was not reached. */
  readonly status: number | undefined;
  /** The API's error code: `not_found`, `quota_exceeded`, `rate_limited`, ... */
  readonly code: string;
  /** The `x-request-id` of the answer, to quote when reporting it. */
  readonly requestId: string | undefined;
  /** Seconds the server asked to wait before trying again (429, 503). */
  readonly retryAfter: number | undefined;

  constructor(
    message: string,
    options: { status?: number; code?: string; requestId?: string; retryAfter?: number } = {},
  ) {
    super(message);
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code ?? "error";
    this.requestId = options.requestId;
    this.retryAfter = options.retryAfter;
  }
}

/** 400: the request could not be parsed. */
export class BadRequestError extends FaaSError {}
/** 401: no API key, or an unknown or revoked one. */
export class AuthenticationError extends FaaSError {}
/** 403: not allowed. */
export class PermissionDeniedError extends FaaSError {}
/** 404: no such resource for this tenant. */
export class NotFoundError extends FaaSError {}
/** 409: the resource's state does not allow this now. */
export class ConflictError extends FaaSError {}
/** 413: the body is larger than the server accepts. */
export class PayloadTooLargeError extends FaaSError {}
/** 422: a value is not acceptable; the message names the field. */
export class ValidationError extends FaaSError {}
/** 429 `rate_limited`: the key's rate limit (see `retryAfter`). */
export class RateLimitError extends FaaSError {}
/** A tenant quota: 429 while in use, 403 for good; the message names the quota. */
export class QuotaExceededError extends FaaSError {}
/** 501: this server cannot do it; the message says what is missing. */
export class NotSupportedError extends FaaSError {}
/** 5xx answers other than 501. */
export class ServerError extends FaaSError {}
/** The server could not be reached, or the connection broke. */
export class ConnectionError extends FaaSError {}

const BY_STATUS: Record<number, typeof FaaSError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  405: BadRequestError,
  409: ConflictError,
  413: PayloadTooLargeError,
  422: ValidationError,
  429: RateLimitError,
  501: NotSupportedError,
};

/** The error for an answer's status and body. */
export function errorFor(
  status: number,
  code: string,
  message: string,
  requestId?: string,
  retryAfter?: number,
): FaaSError {
  const Kind =
    code === "quota_exceeded"
      ? QuotaExceededError
      : (BY_STATUS[status] ?? (status >= 500 ? ServerError : FaaSError));
  return new Kind(message, { status, code, requestId, retryAfter });
}

/** The status each error code is answered with, for errors met inside a stream (where
 * the HTTP status was already 200). */
const STATUS_OF_CODE: Record<string, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  invalid_request: 422,
  invalid_value: 422,
  rate_limited: 429,
  internal: 500,
  sandbox_failed: 500,
  checkpoint_failed: 500,
  unsupported: 501,
  bad_gateway: 502,
  overloaded: 503,
  disk_full: 507,
};

/** The error for an `error` event of a stream: as if it had been the answer. */
export function streamError(code: string, message: string): FaaSError {
  return errorFor(STATUS_OF_CODE[code] ?? 500, code, message);
}
