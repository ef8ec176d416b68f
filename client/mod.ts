/**
 * parley's client entry point for front ends. It imports the server as types only,
 * so bundlers pull in no server code.
 */
import type { inferRouterInputs, inferRouterOutputs } from "@trpc/server";
import type { AppRouter } from "../server/router.ts";

export type { AppRouter };

/** Every procedure's input type, e.g. `RouterInputs["messages"]["send"]`. */
export type RouterInputs = inferRouterInputs<AppRouter>;

/** Every procedure's output type, e.g. `RouterOutputs["rooms"]["get"]`. */
export type RouterOutputs = inferRouterOutputs<AppRouter>;

/** A user as the API returns it. */
export type User = RouterOutputs["users"]["me"];

/** A room as the API returns it. */
export type Room = RouterOutputs["rooms"]["get"];

/** A room member with the user's current name and avatar. */
export type Member = RouterOutputs["rooms"]["join"];

/** A message with the sender's name and avatar at sending time. */
export type Message = RouterOutputs["messages"]["send"];
