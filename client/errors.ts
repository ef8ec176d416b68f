/**
 * The error class of every failed call and subscription of `parley.trpc`, and a guard for it.
 *
 * The built package bundles its own copy of `@trpc/client`, so an app's `TRPCClientError`
 * imported from `@trpc/client` may be another class than the one the client's links create:
 * use the one exported here (or `isParleyError`) for `instanceof` checks.
 */
import { TRPCClientError } from "@trpc/client";
import type { AppRouter } from "../server/router.ts";

export { TRPCClientError };

/**
 * True for an error of a call or subscription of `parley.trpc` (a `TRPCClientError`: the
 * server's refusal, or a failed request). Narrows it, so `error.data?.code` (`"UNAUTHORIZED"`,
 * `"FORBIDDEN"`, ...), `error.data?.httpStatus` and `error.message` are typed.
 */
export function isParleyError(error: unknown): error is TRPCClientError<AppRouter> {
  return error instanceof TRPCClientError;
}
