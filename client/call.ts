/**
 * `joinCall`: a room's video call in the browser, over parley's `calls.*` procedures. One
 * `RTCPeerConnection` per other participant (a mesh), negotiated with WebRTC's "perfect
 * negotiation" pattern (W3C WebRTC 1.0 §10.7, "Perfect negotiation example"): either side may
 * offer whenever its tracks change; when two offers cross, the polite side (the server says
 * which, `calls.join` and `participant.joined`) rolls its own back and answers, the impolite
 * side ignores the other's. ICE candidates trickle through `calls.signal` as they are found.
 *
 * The call's subscription and calls go over the client's WebSocket (a participant lives as
 * long as its socket). When the socket drops and tRPC reconnects, the server has already taken
 * the old participant out of the call: the helper joins again and renegotiates with everyone.
 *
 * WebRTC's types are declared here structurally (the subset used), so the client type-checks
 * without the DOM library; in a browser the global `RTCPeerConnection` is used.
 */
import type { ParleyClient, RouterOutputs } from "./mod.ts";

/** A participant of a room's call: `{ participantId, userId, username, avatarUrl, joinedAt }`. */
export type CallParticipant = Omit<
  RouterOutputs["calls"]["join"]["participants"][number],
  "polite"
>;

/** An `RTCSessionDescriptionInit`. */
interface DescriptionInit {
  type: "offer" | "answer" | "pranswer" | "rollback";
  sdp?: string;
}

/** An `RTCIceCandidateInit`. */
interface CandidateInit {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

/** What is used of a `MediaStreamTrack`. */
interface TrackLike {
  readonly kind: string;
}

/** What is used of a `MediaStream`. */
interface StreamLike {
  getTracks(): TrackLike[];
}

/** What is used of an `RTCPeerConnection`. */
export interface PeerConnectionLike {
  readonly signalingState: string;
  readonly connectionState: string;
  readonly iceGatheringState: string;
  addEventListener(type: "icegatheringstatechange", listener: () => void): void;
  removeEventListener(type: "icegatheringstatechange", listener: () => void): void;
  readonly localDescription: { type: string; sdp: string } | null;
  onnegotiationneeded: ((event: unknown) => void) | null;
  onicecandidate: ((event: { candidate: { toJSON(): CandidateInit } | null }) => void) | null;
  ontrack:
    | ((event: { track: TrackLike; streams: readonly StreamLike[] }) => void)
    | null;
  onconnectionstatechange: ((event: unknown) => void) | null;
  addTrack(track: TrackLike, ...streams: StreamLike[]): unknown;
  setLocalDescription(description?: DescriptionInit): Promise<void>;
  setRemoteDescription(description: DescriptionInit): Promise<void>;
  addIceCandidate(candidate: CandidateInit): Promise<void>;
  close(): void;
}

/** An `RTCConfiguration`, as far as this helper sets it. */
export interface PeerConfiguration {
  iceServers?: { urls: string | string[]; username?: string; credential?: string }[];
  iceTransportPolicy?: "all" | "relay";
  [option: string]: unknown;
}

/** Options of `joinCall`. */
export interface JoinCallOptions<
  Track extends TrackLike = TrackLike,
  Stream extends StreamLike = StreamLike,
> {
  /** The local camera and microphone (`getUserMedia`), sent to every participant; none: receive only. */
  localStream?: Stream;
  /** A remote track arrived from `participant`, in `streams`. */
  onTrack?(participant: CallParticipant, track: Track, streams: readonly Stream[]): void;
  /** Someone joined the call (before their tracks arrive). */
  onParticipantJoined?(participant: CallParticipant): void;
  /** Someone left the call (their connection is closed; remove their tiles). */
  onParticipantLeft?(participant: CallParticipant): void;
  /** A peer connection's state changed (`new`, `connecting`, `connected`, `failed`, …). */
  onConnectionStateChange?(participant: CallParticipant, state: string): void;
  /** A failure while negotiating or relaying (it is also thrown away: the call goes on). */
  onError?(error: unknown): void;
  /** `"relay"` forces every connection through TURN (default `"all"`). */
  iceTransportPolicy?: "all" | "relay";
  /** The peer connection class (default: the global `RTCPeerConnection`). */
  RTCPeerConnection?: new (configuration: PeerConfiguration) => PeerConnectionLike;
}

/** A joined call. */
export interface CallHandle {
  /** This browser's participant id (it changes when a dropped socket rejoins). */
  readonly participantId: string;
  /** The other participants and their peer connections, by participant id. */
  readonly peers: ReadonlyMap<string, { participant: CallParticipant; pc: PeerConnectionLike }>;
  /** Leaves the call: closes every peer connection and tells the others. */
  leave(): Promise<void>;
}

/** Longest wait for one's own ICE gathering before rolling back an offer, in ms. */
const GATHER_WAIT_MS = 1_000;

/** Resolves once `pc` has gathered its ICE candidates, or after `timeoutMs`. */
function gathered(pc: PeerConnectionLike, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
    check();
  });
}

/** Joins again after a reconnect this many times more before giving up (with backoff). */
const REJOIN_ATTEMPTS = 5;

/** One other participant, from this side. */
interface Peer {
  participant: CallParticipant;
  pc: PeerConnectionLike;
  polite: boolean;
  makingOffer: boolean;
  ignoreOffer: boolean;
  /** Its own offer being set, if any (settled either way). */
  offering: Promise<unknown>;
  /** Signals to it go one after another, in order. */
  sending: Promise<unknown>;
}

/**
 * Joins `roomId`'s call: fetches the ICE servers, subscribes to the call's events, joins, and
 * keeps one negotiated peer connection with each other participant until `leave`.
 * @throws the `calls.join` error: `FORBIDDEN` / `NOT_FOUND` for a non-member or an unknown
 * room, `CONFLICT` when the call is full; or the subscription's.
 */
export async function joinCall<
  Track extends TrackLike = TrackLike,
  Stream extends StreamLike = StreamLike,
>(
  parley: ParleyClient,
  roomId: string,
  options: JoinCallOptions<Track, Stream> = {},
): Promise<CallHandle> {
  const PeerConnection = options.RTCPeerConnection ??
    (globalThis as unknown as {
      RTCPeerConnection: new (configuration: PeerConfiguration) => PeerConnectionLike;
    }).RTCPeerConnection;
  const configuration: PeerConfiguration = {
    iceServers: [],
    iceTransportPolicy: options.iceTransportPolicy ?? "all",
  };
  const peers = new Map<string, Peer>();
  let self = "";
  let left = false;
  const report = (error: unknown) => options.onError?.(error);

  function send(peer: Peer, payload: { description?: DescriptionInit; candidate?: CandidateInit }) {
    const to = peer.participant.participantId;
    peer.sending = peer.sending.then(() =>
      parley.trpc.calls.signal.mutate({ roomId, to, ...payload } as never)
    ).catch(report);
  }

  function connect(participant: CallParticipant, polite: boolean): Peer {
    const existing = peers.get(participant.participantId);
    if (existing) return existing;
    const pc = new PeerConnection(configuration);
    const peer: Peer = {
      participant,
      pc,
      polite,
      makingOffer: false,
      ignoreOffer: false,
      offering: Promise.resolve(),
      sending: Promise.resolve(),
    };
    peers.set(participant.participantId, peer);
    pc.onnegotiationneeded = async () => {
      try {
        peer.makingOffer = true;
        const setting = pc.setLocalDescription();
        peer.offering = setting.catch(() => {});
        await setting;
        const description = pc.localDescription!;
        send(peer, { description: { type: description.type as "offer", sdp: description.sdp } });
      } catch (error) {
        report(error);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) send(peer, { candidate: candidate.toJSON() });
    };
    pc.ontrack = ({ track, streams }) =>
      options.onTrack?.(participant, track as Track, streams as readonly Stream[]);
    pc.onconnectionstatechange = () =>
      options.onConnectionStateChange?.(participant, pc.connectionState);
    const stream = options.localStream;
    for (const track of stream?.getTracks() ?? []) pc.addTrack(track, stream!);
    options.onParticipantJoined?.(participant);
    return peer;
  }

  function disconnect(participantId: string): void {
    const peer = peers.get(participantId);
    if (!peer) return;
    peers.delete(participantId);
    receiving.delete(participantId);
    peer.pc.close();
    options.onParticipantLeft?.(peer.participant);
  }

  /** Perfect negotiation's receiving side (W3C WebRTC 1.0 §10.7). */
  async function receive(
    peer: Peer,
    signal: { description?: DescriptionInit; candidate?: CandidateInit },
  ): Promise<void> {
    const { pc } = peer;
    if (signal.description) {
      const description = signal.description;
      const collision = description.type === "offer" &&
        (peer.makingOffer || pc.signalingState !== "stable");
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return;
      if (collision) {
        // Chromium: rolling back one's own offer while its ICE candidates are still being
        // gathered can leave the connection without candidates for good (about one glare in
        // ten in the browser test; an ICE restart does not recover it). Let the gathering end
        // first, for at most a second.
        await peer.offering;
        await gathered(pc, GATHER_WAIT_MS);
      }
      await pc.setRemoteDescription(description);
      if (description.type === "offer") {
        await pc.setLocalDescription();
        const answer = pc.localDescription!;
        send(peer, { description: { type: answer.type as "answer", sdp: answer.sdp } });
      }
    } else if (signal.candidate) {
      try {
        await pc.addIceCandidate(signal.candidate);
      } catch (error) {
        if (!peer.ignoreOffer) throw error;
      }
    }
  }

  /** Signals are handled one after another per peer, in the order they came. */
  const receiving = new Map<string, Promise<void>>();

  /**
   * Joins (again): fresh ICE servers (TURN credentials expire), then the participants present,
   * with the politeness the server gives. Joins announced meanwhile are in the answer, so
   * events are ignored until it comes (`self` is "").
   */
  async function join(): Promise<void> {
    for (const participantId of [...peers.keys()]) disconnect(participantId);
    self = "";
    configuration.iceServers = (await parley.trpc.calls.iceServers.query()).iceServers;
    const joined = await parley.trpc.calls.join.mutate({ roomId });
    if (left) {
      // leave() came while joining: the server must not keep this participant.
      await parley.trpc.calls.leave.mutate({ roomId }).catch(report);
      return;
    }
    self = joined.participantId;
    for (const { polite, ...participant } of joined.participants) connect(participant, polite);
  }

  /** Joins again after a reconnect, retrying with backoff (the old seat may still be taken). */
  async function rejoin(): Promise<void> {
    for (let attempt = 0; !left; attempt++) {
      try {
        return await join();
      } catch (error) {
        report(error);
        if (attempt >= REJOIN_ATTEMPTS) return;
        await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
      }
    }
  }

  let joining: Promise<void> = Promise.resolve();

  const { promise: started, resolve: onStarted, reject: onFailed } = Promise.withResolvers<
    void
  >();
  let starts = 0;
  const subscription = parley.trpc.calls.onEvent.subscribe({ roomId }, {
    onStarted() {
      // After a reconnect the old participant is gone: join again, renegotiate with everyone.
      if (++starts === 1) onStarted();
      else if (!left) joining = joining.then(rejoin);
    },
    onData(event) {
      if (left) return;
      if (event.type === "participant.joined") {
        const { type: _type, polite, ...participant } = event;
        if (participant.participantId !== self && self !== "") connect(participant, polite);
      } else if (event.type === "participant.left") {
        disconnect(event.participantId);
      } else if (event.type === "signal") {
        const { type: _type, from, ...signal } = event;
        const peer = peers.get(from);
        if (!peer) return; // not (or no longer) in the call
        const previous = receiving.get(from) ?? Promise.resolve();
        receiving.set(from, previous.then(() => receive(peer, signal)).catch(report));
      }
    },
    onError(error) {
      if (starts === 0) onFailed(error);
      else report(error);
    },
  });
  try {
    await started;
    await (joining = join());
  } catch (error) {
    subscription.unsubscribe();
    throw error;
  }
  return {
    get participantId() {
      return self;
    },
    get peers() {
      return new Map([...peers].map(([id, { participant, pc }]) => [id, { participant, pc }]));
    },
    async leave() {
      if (left) return;
      left = true;
      await joining.catch(() => {}); // a join in flight leaves by itself once it lands
      for (const participantId of [...peers.keys()]) disconnect(participantId);
      try {
        await parley.trpc.calls.leave.mutate({ roomId });
      } finally {
        subscription.unsubscribe();
      }
    },
  };
}
