// A minimal chat page on parley's client: sign up or sign in, pick or create a room (with its
// unread count), chat: who is online and who is typing, edit and delete one's own messages,
// react with emoji; a video call in the open room; set a password (to sign in on other
// devices), change the avatar, sign out.
// The API URL comes from ?api=... (default http://localhost:8000).
import {
  createParleyClient,
  isUnauthorized,
  joinCall,
  signIn,
  signOut,
  signUp,
  watchRoom,
} from "./parley_client.js";

const api = new URLSearchParams(location.search).get("api") ?? "http://localhost:8000";
// Tokens are stored per API, so a link with another ?api= never receives this one's token.
const TOKEN = `parley-token:${api}`;
// The open room, per user, so whoever signs in next on this browser starts from their own.
const roomKey = (user) => `parley-room:${api}:${user.id}`;
// How often the profile is read again, so a change made on another device shows here.
const PROFILE_REFRESH_MS = 5000;
const SESSION_ENDED = "Your session ended (it expired, or was signed out on another device). " +
  "Sign in again.";
// How often the room list's unread counts are read again while it is shown.
const UNREAD_REFRESH_MS = 3000;
// The emoji offered under each message (any other one a member used shows too).
const EMOJI = ["👍", "❤️", "😂", "🎉"];
const $ = (selector) => document.querySelector(selector);

// The sockets the client opened, so a test (or you, in DevTools) can cut the connection:
// parleyDebug.sockets.forEach((socket) => socket.close())
// With parleyDebug.offline = true, new sockets fail to connect (the network is down) until it
// is set back to false.
const sockets = [];
globalThis.parleyDebug = { sockets, offline: false };
class TrackedWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(globalThis.parleyDebug.offline ? "ws://127.0.0.1:9/offline" : url, protocols);
    sockets.push(this);
  }
}

const parley = createParleyClient({
  url: api,
  token: () => localStorage.getItem(TOKEN),
  // The sign-in helpers store a new session's token here (null: signed out).
  saveToken: (token) => token ? localStorage.setItem(TOKEN, token) : localStorage.removeItem(TOKEN),
  WebSocket: TrackedWebSocket,
});
/** The signed-in user as last read, or null on the welcome screen. */
let me = null;
let watching = null;
/** The id of the open room, or null. */
let openRoomId = null;
/** The open room's state as watchRoom last reported it. */
let roomState = "idle";
/** The id of the message being edited in the send form, or null. */
let editing = null;
let markReadTimer = null;
let unreadTimer = null;

// The one place a session that ends is handled: whichever call or subscription noticed it,
// this runs once, and nothing retries until someone signs in again.
parley.onSessionChange((state) => {
  if (state === "ended") void sessionEnded();
});

function show(section) {
  for (const id of ["welcome", "rooms", "room"]) $(`#${id}`).hidden = id !== section;
  $("#account").hidden = section === "welcome";
  $("#profile").hidden = section === "welcome";
}

function showError(error) {
  $("#error").hidden = !error;
  $("#error").textContent = error ? `Error: ${error.message ?? error}` : "";
}

function showNotice(text) {
  $("#notice").hidden = !text;
  $("#notice").textContent = text ?? "";
}

function setState(state) {
  $("#state").textContent = state;
  $("#state").dataset.state = state;
}

/** An avatar image, or the first letter of the name when there is none. */
function avatar(url, name) {
  if (url) {
    const img = document.createElement("img");
    img.className = "avatar";
    img.src = url;
    img.alt = name;
    return img;
  }
  const letter = document.createElement("div");
  letter.className = "avatar fallback";
  letter.textContent = (name[0] ?? "?").toUpperCase();
  return letter;
}

/** Shows the signed-in user: name, avatar, and whether a password is set. */
function renderMe(user) {
  me = user;
  $("#me").textContent = user.username;
  $("#me-avatar").replaceChildren(avatar(user.avatarUrl, user.username));
  $("#me-avatar").dataset.src = user.avatarUrl ?? "";
  $("#guest-note").hidden = user.hasPassword;
  const current = $("#password-form [name=currentPassword]");
  current.hidden = !user.hasPassword;
  current.required = user.hasPassword;
  $("#password-form button").textContent = user.hasPassword ? "Change password" : "Set password";
}

/** Reads the profile again (it may have changed on another device); quiet on failure. */
async function refreshMe() {
  if (!me || parley.session !== "signed-in") return;
  try {
    renderMe(await parley.trpc.users.me.query());
  } catch {
    // A session that ended is handled by the session listener; anything else (a network
    // blip) by the next refresh.
  }
}
setInterval(() => void refreshMe(), PROFILE_REFRESH_MS);
globalThis.addEventListener("focus", () => void refreshMe());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") void refreshMe();
});

function button(text, className, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.onclick = onclick;
  return b;
}

/**
 * One message: author, content (or "message deleted"), "(edited)", edit and delete buttons on
 * one's own, and reactions: the usual emoji and any other used, each with its count, pressed
 * when it is one's own (a click toggles it).
 */
function renderMessage(message) {
  const item = document.createElement("li");
  item.className = message.deletedAt ? "message deleted" : "message";
  item.dataset.seq = String(message.seq);
  item.dataset.id = message.id;
  const body = document.createElement("div");
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.username ?? "deleted user";
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = message.content;
  body.append(author, content);
  if (message.deletedAt || message.editedAt) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = message.deletedAt ? "message deleted" : "(edited)";
    body.append(note);
  }
  if (!message.deletedAt) {
    if (me && message.userId === me.id) {
      const actions = document.createElement("div");
      actions.className = "actions";
      actions.append(
        button("Edit", "edit", () => startEditing(message)),
        button("Delete", "delete", () => void watching?.delete(message.id).catch(showError)),
      );
      body.append(actions);
    }
    const reactions = document.createElement("div");
    reactions.className = "reactions";
    const used = message.reactions.map((r) => r.emoji);
    for (const emoji of [...EMOJI, ...used.filter((e) => !EMOJI.includes(e))]) {
      const reaction = message.reactions.find((r) => r.emoji === emoji);
      const b = button(emoji, "reaction", () => {
        void watching?.react(message.id, emoji).catch(showError);
      });
      b.dataset.emoji = emoji;
      b.setAttribute("aria-pressed", String(reaction?.mine ?? false));
      if (reaction) {
        b.classList.add("used");
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = ` ${reaction.count}`;
        b.append(count);
      }
      reactions.append(b);
    }
    body.append(reactions);
  }
  item.append(avatar(message.avatarUrl, author.textContent), body);
  return item;
}

function renderMessages(messages) {
  const list = $("#messages");
  list.replaceChildren(...messages.map(renderMessage));
  list.lastElementChild?.scrollIntoView();
  markReadSoon();
}

/** The members online in the room, each with a green dot. */
function renderOnline(online) {
  $("#online").replaceChildren(...online.map((member) => {
    const item = document.createElement("li");
    item.className = "member";
    item.dataset.username = member.username;
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.title = "online";
    item.append(dot, member.username);
    return item;
  }));
}

/** "bob is typing…", "bob and carol are typing…", "4 people are typing…". */
function renderTyping(typing) {
  const names = typing.map((member) => member.username);
  $("#typing").hidden = names.length === 0;
  $("#typing").textContent = names.length === 1
    ? `${names[0]} is typing…`
    : names.length === 2
    ? `${names[0]} and ${names[1]} are typing…`
    : `${names.length} people are typing…`;
}

/** Marks the open room read shortly after new messages show, while the page is seen. */
function markReadSoon() {
  if (markReadTimer !== null || !watching) return;
  markReadTimer = setTimeout(markReadNow, 300);
}

function markReadNow() {
  clearTimeout(markReadTimer);
  markReadTimer = null;
  if (watching && roomState === "live" && document.visibilityState === "visible") {
    watching.markRead().catch(() => {});
  }
}

/** Puts one's own message in the send form to be edited. */
function startEditing(message) {
  editing = message.id;
  const input = $("#send-form [name=content]");
  input.value = message.content;
  input.focus();
  $("#send-form button").textContent = "Save";
  $("#editing").hidden = false;
}

function stopEditing() {
  editing = null;
  $("#send-form [name=content]").value = "";
  $("#send-form button").textContent = "Send";
  $("#editing").hidden = true;
}

/** Stops the open room; with `read`, what it showed is marked read first. */
function stopWatching({ read = true } = {}) {
  if (read && markReadTimer !== null) markReadNow();
  clearTimeout(markReadTimer);
  markReadTimer = null;
  watching?.stop();
  watching = null;
  openRoomId = null;
  roomState = "idle";
  leaveCall(); // leaving or switching rooms leaves its call
  stopEditing();
  renderOnline([]);
  renderTyping([]);
}

/** Back to the welcome screen (sign in or sign up), with `notice` if given. */
function showWelcome(notice = null) {
  stopWatching({ read: false }); // signing out, or the session is over
  clearInterval(unreadTimer);
  me = null;
  setState("idle");
  showNotice(notice);
  show("welcome");
}

async function sessionEnded() {
  if (!me) return; // already on the welcome screen
  showWelcome(SESSION_ENDED);
  // Forgets the dead token (nothing to tell the server: the session is already over).
  await signOut(parley).catch(() => {});
}

/** Shows each of one's rooms' unread count (`rooms.mine`) in the room list; 0 shows nothing. */
function renderUnread(mine) {
  for (const room of mine) {
    const badge = $(`#room-list li[data-room-id="${room.id}"] .unread`);
    if (!badge) continue;
    badge.textContent = String(room.unreadCount);
    badge.dataset.unread = String(room.unreadCount);
    badge.hidden = room.unreadCount === 0;
  }
}

async function refreshUnread() {
  if ($("#rooms").hidden || parley.session !== "signed-in") return;
  try {
    renderUnread(await parley.trpc.rooms.mine.query());
  } catch {
    // A session that ended is handled by the session listener; anything else by the next try.
  }
}

async function showRooms() {
  stopWatching();
  if (me) localStorage.removeItem(roomKey(me));
  show("rooms");
  setState("idle");
  const [{ items }, mine] = await Promise.all([
    parley.trpc.rooms.list.query({ limit: 50 }),
    parley.trpc.rooms.mine.query(),
  ]);
  const member = new Set(mine.map((room) => room.id));
  $("#room-list").replaceChildren(...items.map((room) => {
    const item = document.createElement("li");
    item.dataset.roomId = room.id;
    item.dataset.roomName = room.name;
    const open = document.createElement("button");
    open.textContent = member.has(room.id) ? "Open" : "Join";
    open.dataset.roomName = room.name;
    open.onclick = () => openRoom(room.id, { join: !member.has(room.id) }).catch(showError);
    const name = document.createElement("span");
    name.className = "room-name";
    name.textContent = room.name;
    const unread = document.createElement("span");
    unread.className = "unread";
    unread.title = "unread messages";
    unread.hidden = true;
    item.append(avatar(room.thumbnailUrl, room.name), name, unread, open);
    return item;
  }));
  renderUnread(mine);
  clearInterval(unreadTimer);
  unreadTimer = setInterval(() => void refreshUnread(), UNREAD_REFRESH_MS);
}

async function openRoom(roomId, { join = false } = {}) {
  clearInterval(unreadTimer);
  if (join) await parley.trpc.rooms.join.mutate({ roomId });
  const room = await parley.trpc.rooms.get.query({ roomId });
  if (me) localStorage.setItem(roomKey(me), roomId);
  $("#room-name").textContent = room.name;
  $("#room-thumbnail").hidden = !room.thumbnailUrl;
  if (room.thumbnailUrl) $("#room-thumbnail").src = room.thumbnailUrl;
  show("room");
  stopWatching();
  openRoomId = roomId;
  showCallMessage(null);
  watching = watchRoom(parley, roomId, {
    onMessages: renderMessages,
    onPresence: renderOnline,
    onTyping: renderTyping,
    onStateChange: (state, error) => {
      roomState = state;
      setState(state);
      if (state === "live") markReadSoon();
      // A session that ends is shown by the session listener, not as an error here.
      if (error && state !== "signed-out") showError(error);
    },
  });
}

// The open room's call: a muted tile for one's own camera, one per other participant, each
// with the name and the connection's state. One peer connection per participant (joinCall).

/** The call in progress, or null: the camera's stream and joinCall's handle (once joined). */
let call = null;
/** Bumped by every start and leave: a start that finishes after a leave is dropped. */
let callGeneration = 0;

const CALL_STATES = {
  new: "connecting…",
  connecting: "connecting…",
  connected: "connected",
  disconnected: "reconnecting…",
  failed: "connection failed",
};

function showCallMessage(text) {
  $("#call-message").hidden = !text;
  $("#call-message").textContent = text ?? "";
}

function renderCallButton() {
  $("#call-button").textContent = call ? "Leave call" : "Join call";
  $("#tiles").hidden = !call;
}

/** A video tile: `<figure>` with the video, the name and a state line. */
function addTile(id, name, { local = false } = {}) {
  const tile = document.createElement("figure");
  tile.className = local ? "tile local" : "tile remote";
  if (!local) tile.dataset.participantId = id;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = local; // one's own sound would echo
  const caption = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = local ? `${name} (you)` : name;
  const state = document.createElement("span");
  state.className = "call-state";
  caption.append(label, state);
  tile.append(video, caption);
  $("#tiles").append(tile);
  setTileState(tile, local ? "joining…" : "connecting…", "connecting");
  return tile;
}

function setTileState(tile, text, state) {
  const line = tile.querySelector(".call-state");
  line.textContent = text;
  tile.dataset.state = state;
}

const remoteTile = (participant) =>
  $(`#tiles .tile.remote[data-participant-id="${participant.participantId}"]`);

function showStream(tile, stream) {
  const video = tile.querySelector("video");
  if (video.srcObject === stream) return;
  video.srcObject = stream;
  video.play().catch(() => {}); // autoplay does it too; a refusal leaves the tile still
}

/** Why the camera could not be used, in words. */
function cameraProblem(error) {
  if (error?.name === "NotAllowedError") {
    return "Camera and microphone access was refused: allow it in the browser to join the call.";
  }
  if (error?.name === "NotFoundError") return "No camera or microphone found.";
  return `The camera could not be started: ${error?.message ?? error}`;
}

/** Gets the camera and microphone and joins the open room's call. */
async function startCall() {
  const roomId = openRoomId;
  if (!roomId || !me) return;
  const generation = ++callGeneration;
  const current = () => generation === callGeneration;
  showCallMessage(null);
  call = { stream: null, handle: null }; // the button leaves from now on
  renderCallButton();
  let stream;
  try {
    if (!navigator.mediaDevices) throw new Error("it needs a secure (https) page");
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (error) {
    if (!current()) return;
    leaveCall();
    return showCallMessage(cameraProblem(error));
  }
  if (!current()) return stream.getTracks().forEach((track) => track.stop());
  call.stream = stream;
  const local = addTile(null, me.username, { local: true });
  showStream(local, stream);
  try {
    const handle = await joinCall(parley, roomId, {
      localStream: stream,
      onParticipantJoined: (participant) => {
        if (current() && !remoteTile(participant)) {
          addTile(participant.participantId, participant.username);
        }
      },
      onTrack: (participant, track, streams) => {
        const tile = current() && remoteTile(participant);
        if (tile) showStream(tile, streams[0] ?? new MediaStream([track]));
      },
      onConnectionStateChange: (participant, state) => {
        const tile = current() && remoteTile(participant);
        if (tile) setTileState(tile, CALL_STATES[state] ?? state, state);
      },
      onParticipantLeft: (participant) => remoteTile(participant)?.remove(),
      onError: (error) => console.warn("call:", error),
    });
    if (!current()) return void handle.leave().catch(() => {});
    call.handle = handle;
    setTileState(local, "in the call", "connected");
  } catch (error) {
    if (!current()) return;
    leaveCall();
    showCallMessage(
      error?.data?.code === "CONFLICT"
        ? "This call is full: try again when someone leaves."
        : `Could not join the call: ${error?.message ?? error}`,
    );
  }
}

/** Leaves the call (if any): stops the camera and removes every tile. */
function leaveCall() {
  callGeneration++;
  if (call) {
    call.stream?.getTracks().forEach((track) => track.stop());
    void call.handle?.leave().catch(() => {});
    call = null;
  }
  $("#tiles").replaceChildren();
  renderCallButton();
}

$("#call-button").onclick = () => call ? leaveCall() : void startCall();

/** Signed in as `user`: shows their profile and the room they had open, else the list. */
async function enter(user) {
  renderMe(user);
  showError(null);
  showNotice(null);
  const roomId = localStorage.getItem(roomKey(user));
  if (roomId) await openRoom(roomId);
  else await showRooms();
}

/** Runs a form's action with its values; shows what fails. */
function onSubmit(selector, action) {
  $(selector).onsubmit = async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await action(new FormData(form), form);
    } catch (error) {
      showError(error);
    }
  };
}

onSubmit("#signin-form", async (data, form) => {
  const { user } = await signIn(parley, {
    username: String(data.get("username")),
    password: String(data.get("password")),
  });
  form.reset();
  await enter(user);
});

onSubmit("#signup-form", async (data, form) => {
  const password = String(data.get("password") || "");
  const { user } = await signUp(parley, {
    username: String(data.get("username")),
    avatarUrl: String(data.get("avatarUrl") || "") || null,
    ...(password ? { password } : {}),
  });
  form.reset();
  await enter(user);
});

onSubmit("#avatar-form", async (data, form) => {
  renderMe(
    await parley.trpc.users.update.mutate({
      avatarUrl: String(data.get("avatarUrl") || "") || null,
    }),
  );
  form.reset();
  showError(null);
});

onSubmit("#password-form", async (data, form) => {
  const currentPassword = String(data.get("currentPassword") || "");
  const { sessionsEnded } = await parley.trpc.users.setPassword.mutate({
    password: String(data.get("password")),
    ...(currentPassword ? { currentPassword } : {}),
  });
  form.reset();
  renderMe({ ...me, hasPassword: true });
  showError(null);
  showNotice(
    sessionsEnded > 0
      ? `Password changed; ${sessionsEnded} other device(s) signed out.`
      : `Password set: sign in as ${me.username} on your other devices.`,
  );
});

$("#sign-out").onclick = async () => {
  const name = me?.username;
  showWelcome(`Signed out${name ? ` (${name})` : ""}.`);
  try {
    await signOut(parley);
  } catch (error) {
    showError(error);
  }
};

onSubmit("#room-form", async (data, form) => {
  const room = await parley.trpc.rooms.create.mutate({
    name: String(data.get("name")),
    thumbnailUrl: String(data.get("thumbnailUrl") || "") || null,
  });
  form.reset();
  await openRoom(room.id);
});

$("#send-form").onsubmit = async (event) => {
  event.preventDefault();
  const input = event.target.elements.content;
  const content = input.value;
  const messageId = editing;
  input.value = "";
  try {
    if (messageId) {
      stopEditing();
      await watching.edit(messageId, content);
    } else await watching.send(content);
  } catch (error) {
    input.value = content;
    showError(error);
  }
};
// Typing: every keystroke tells watchRoom, which sends at most one call every 2.5 s; an empty
// box or leaving it stops. (Not while editing an old message.)
$("#send-form [name=content]").addEventListener("input", (event) => {
  if (!editing) watching?.setTyping(event.target.value !== "");
});
$("#send-form [name=content]").addEventListener("blur", () => watching?.setTyping(false));
$("#cancel-edit").onclick = stopEditing;
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") markReadSoon();
});

$("#load-older").onclick = () => watching?.loadOlder().catch(showError);
$("#leave-room").onclick = () => showRooms().catch(showError);

async function start() {
  if (!localStorage.getItem(TOKEN)) return showWelcome();
  let user;
  try {
    user = await parley.trpc.users.me.query();
  } catch (error) {
    if (!isUnauthorized(error)) throw error;
    // The stored session is over: forget its token and say so.
    showWelcome(SESSION_ENDED);
    await signOut(parley).catch(() => {});
    return;
  }
  await enter(user);
}

start().catch((error) => {
  showWelcome();
  showError(error);
});
