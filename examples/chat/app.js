// A minimal chat page on parley's client: sign up, pick or create a room, chat.
// The API URL comes from ?api=... (default http://localhost:8000).
import { createParleyClient, watchRoom } from "./parley_client.js";

const api = new URLSearchParams(location.search).get("api") ?? "http://localhost:8000";
// Tokens are stored per API, so a link with another ?api= never receives this one's token.
const TOKEN = `parley-token:${api}`;
const ROOM = `parley-room:${api}`;
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
  WebSocket: TrackedWebSocket,
});
let watching = null;

function show(section) {
  for (const id of ["signup", "rooms", "room"]) $(`#${id}`).hidden = id !== section;
}

function showError(error) {
  $("#error").hidden = !error;
  $("#error").textContent = error ? `Error: ${error.message ?? error}` : "";
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

function renderMessages(messages) {
  const list = $("#messages");
  list.replaceChildren(...messages.map((message) => {
    const item = document.createElement("li");
    item.className = "message";
    item.dataset.seq = String(message.seq);
    const body = document.createElement("div");
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = message.username;
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = message.content;
    body.append(author, content);
    item.append(avatar(message.avatarUrl, message.username), body);
    return item;
  }));
  list.lastElementChild?.scrollIntoView();
}

async function showRooms() {
  watching?.stop();
  watching = null;
  localStorage.removeItem(ROOM);
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
    name.textContent = room.name;
    item.append(avatar(room.thumbnailUrl, room.name), name, join);
    return item;
  }));
}

async function openRoom(roomId, { join = false } = {}) {
  if (join) await parley.trpc.rooms.join.mutate({ roomId });
  const room = await parley.trpc.rooms.get.query({ roomId });
  localStorage.setItem(ROOM, roomId);
  $("#room-name").textContent = room.name;
  $("#room-thumbnail").hidden = !room.thumbnailUrl;
  if (room.thumbnailUrl) $("#room-thumbnail").src = room.thumbnailUrl;
  show("room");
  watching?.stop();
  watching = watchRoom(parley, roomId, {
    onMessages: renderMessages,
    onStateChange: (state, error) => {
      setState(state);
      if (error) showError(error);
    },
  });
}

$("#signup-form").onsubmit = async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const { user, token } = await parley.trpc.users.create.mutate({
      username: String(form.get("username")),
      avatarUrl: String(form.get("avatarUrl") || "") || null,
    });
    localStorage.setItem(TOKEN, token);
    $("#me").textContent = user.username;
    showError(null);
    await showRooms();
  } catch (error) {
    showError(error);
  }
};

$("#room-form").onsubmit = async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const room = await parley.trpc.rooms.create.mutate({
      name: String(form.get("name")),
      thumbnailUrl: String(form.get("thumbnailUrl") || "") || null,
    });
    event.target.reset();
    await openRoom(room.id);
  } catch (error) {
    showError(error);
  }
};

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
  if (!localStorage.getItem(TOKEN)) return show("signup");
  try {
    const me = await parley.trpc.users.me.query();
    $("#me").textContent = me.username;
  } catch {
    localStorage.removeItem(TOKEN);
    return show("signup");
  }
  const roomId = localStorage.getItem(ROOM);
  if (roomId) await openRoom(roomId);
  else await showRooms();
}

start().catch(showError);
