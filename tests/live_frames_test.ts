/** The frames of presence and typing events, written directly, are what superjson writes. */
import assert from "node:assert/strict";
import superjson from "superjson";
import { dataFrameSuffix, liveListSuffix } from "../server/realtime/direct_stream.ts";

const member = (i: number, avatarUrl: string | null) => ({
  roomId: "0b5e9a0e-7c1b-4a53-9a55-1f0e4d7d2a11",
  userId: crypto.randomUUID(),
  username: ["ada", 'Zoë "the" \\ one', "名前", "a\u2028b", "𝐚𝐝𝐚"][i % 5],
  avatarUrl,
  joinedAt: new Date(1_700_000_000_000 + i * 1_234),
});

Deno.test("presence and typing frames equal superjson's, for empty and long lists", () => {
  const avatars = [null, 'https://cdn.example.com/a.png?x=1&y="2"', "https://例え.jp/ü.png"];
  for (const size of [0, 1, 2, 25]) {
    const members = Array.from({ length: size }, (_, i) => member(i, avatars[i % 3]));
    for (
      const [type, field] of [["presence.changed", "online"], ["typing.changed", "typing"]] as const
    ) {
      const event = { type, [field]: members };
      const expected = dataFrameSuffix(superjson.serialize, "42", event);
      assert.equal(liveListSuffix("42", type, field, members), expected, `${type} × ${size}`);
      // And superjson reads it back as the event, Dates included.
      const frame = JSON.parse(`{"id":1${expected}`);
      assert.deepEqual(superjson.deserialize(frame.result.data), { id: "42", data: event });
    }
  }
});
