/**
 * Recovery positions: the server's epoch, the highest stream position
 * delivered to the application, and, while a resume runs, the live
 * messages held back until the replay of what was missed is done. This is
 * what lets the client deliver every broadcast once and in order across
 * reconnects.
 */

/**
 * Envelopes addressed to this connection alone. Their `pos`, if a server
 * ever adds one, is not a stream position: they are never dropped as
 * duplicates and never move the recovery mark.
 */
const UNPOSITIONED_TYPES = new Set([
  "welcome", "resumed", "reply", "error", "pong", "subscribed", "unsubscribed", "members", "reconnect",
]);

/** Whether `envelope` has a place in the stream (and so may be a duplicate). */
export function isPositioned(envelope) {
  return typeof envelope.pos === "number" && !UNPOSITIONED_TYPES.has(envelope.type);
}

export class Recovery {
  constructor() {
    this.epoch = null;
    /** The highest position delivered, or null before any. */
    this.lastPos = null;
    /** During a resume: `{connectedAt, held, timer}`. */
    this.resume = null;
  }

  /**
   * A connection was welcomed. Returns whether it resumes an earlier one,
   * with the epoch and position to resume from, and the stream position
   * the new connection starts at.
   */
  welcome(welcome) {
    const resuming = this.epoch !== null;
    const previousEpoch = this.epoch;
    const since = this.lastPos === null ? 0 : this.lastPos;
    const position = typeof welcome.position === "number" ? welcome.position : null;
    if (!resuming || welcome.epoch !== previousEpoch) {
      // A new stream of positions: everything after the current one is new.
      this.lastPos = position;
    }
    if (welcome.epoch !== undefined && welcome.epoch !== null) {
      this.epoch = welcome.epoch;
    }
    return {resuming: resuming, previousEpoch: previousEpoch, since: since, position: position};
  }

  /**
   * Where a new event stream resumes: `EPOCH:POSITION` of the highest
   * position delivered (an event id, docs/protocol.md), or null before any.
   */
  resumeId() {
    return this.epoch === null || this.lastPos === null ? null : this.epoch + ":" + this.lastPos;
  }

  /** Hold live messages after `position` until finishResume(); `timer` is the caller's deadline. */
  startResume(position, timer) {
    this.resume = {connectedAt: position, held: [], timer: timer};
  }

  /** Keep `envelope` for after the replay when it is live traffic; true if held. */
  hold(envelope) {
    const resume = this.resume;
    if (resume && resume.connectedAt !== null && envelope.pos > resume.connectedAt) {
      resume.held.push(envelope);
      return true;
    }
    return false;
  }

  /** Record a positioned envelope as delivered; false for one delivered already. */
  advance(envelope) {
    if (this.lastPos !== null && envelope.pos <= this.lastPos) {
      return false; // A replay overlapping live traffic.
    }
    this.lastPos = envelope.pos;
    return true;
  }

  /** End the resume; returns it (its `held` sorted by position), or null if none ran. */
  finishResume() {
    const resume = this.resume;
    this.resume = null;
    if (resume) {
      resume.held.sort(function (a, b) { return a.pos - b.pos; });
    }
    return resume;
  }
}
