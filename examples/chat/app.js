// A minimal chat page on parley's client: sign up or sign in, pick or create a room, chat;
// set a password (to sign in on other devices), change the avatar, sign out.
// The API URL comes from ?api=... (default http://localhost:8000).
import {
  createParleyClient,
  isUnauthorized,
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
const $ = (selector) => document.querySelector(selector);

// The sockets the client opened, so a test (or you, in DevTools) can cut the connection:
// parleyDebug.sockets.forEach((socket) => socket.close())
const sockets = [];
globalThis.parleyDebug = { sockets };
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
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

function renderMessages(messages) {
  const list = $("#messages");
  list.replaceChildren(...messages.map((message) => {
    const item = document.createElement("li");
    item.className = "message";
    item.dataset.seq = String(message.seq);
    const body = document.createElement("div");
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = message.username ?? "deleted user";
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = message.content;
    body.append(author, content);
    item.append(avatar(message.avatarUrl, author.textContent), body);
    return item;
  }));
  list.lastElementChild?.scrollIntoView();
}

function stopWatching() {
  watching?.stop();
  watching = null;
}

/** Back to the welcome screen (sign in or sign up), with `notice` if given. */
function showWelcome(notice = null) {
  stopWatching();
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

async function showRooms() {
  stopWatching();
  if (me) localStorage.removeItem(roomKey(me));
  show("rooms");
  setState("idle");
  const { items } = await parley.trpc.rooms.list.query({ limit: 50 });
  $("#room-list").replaceChildren(...items.map((room) => {
    const item = document.createElement("li");
    const join = document.createElement("button");
    join.textContent = "Join";
    join.dataset.roomName = room.name;
    join.onclick = () => openRoom(room.id, { join: true }).catch(showError);
    const name = document.createElement("span");
    name.className = "room-name";
    name.textContent = room.name;
    item.append(avatar(room.thumbnailUrl, room.name), name, join);
    return item;
  }));
}

async function openRoom(roomId, { join = false } = {}) {
  if (join) await parley.trpc.rooms.join.mutate({ roomId });
  const room = await parley.trpc.rooms.get.query({ roomId });
  if (me) localStorage.setItem(roomKey(me), roomId);
  $("#room-name").textContent = room.name;
  $("#room-thumbnail").hidden = !room.thumbnailUrl;
  if (room.thumbnailUrl) $("#room-thumbnail").src = room.thumbnailUrl;
  show("room");
  stopWatching();
  watching = watchRoom(parley, roomId, {
    onMessages: renderMessages,
    onStateChange: (state, error) => {
      setState(state);
      // A session that ends is shown by the session listener, not as an error here.
      if (error && state !== "signed-out") showError(error);
    },
  });
}

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
  input.value = "";
  try {
    await watching.send(content);
  } catch (error) {
    input.value = content;
    showError(error);
  }
};

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
