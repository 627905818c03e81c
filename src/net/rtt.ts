/**
 * Round-trip-time estimate of one member link, fed by ping samples.
 *
 * Two views, for two uses: `smoothed` (EWMA with TCP's gain of 1/8) is what an
 * operator sees as "the RTT now"; `floor` (the minimum over the last
 * WINDOW samples) is the path's propagation delay, which is what classifies
 * a link as datacenter, hybrid or internet. Queueing and a busy event loop
 * only ever add to a sample, so one slow ping must not flip a datacenter link
 * to hybrid, while a real move to a farther path shows within WINDOW pings.
 */
export const RTT_WINDOW = 8;
const GAIN = 1 / 8;

export class RttEstimator {
  #samples: number[] = [];
  #smoothed: number | null = null;

  observe(ms: number): void {
    this.#smoothed = this.#smoothed === null ? ms : this.#smoothed + GAIN * (ms - this.#smoothed);
    this.#samples.push(ms);
    if (this.#samples.length > RTT_WINDOW) this.#samples.shift();
  }

  get smoothed(): number | null {
    return this.#smoothed === null ? null : Math.round(this.#smoothed * 100) / 100;
  }

  get floor(): number | null {
    return this.#samples.length === 0 ? null : Math.min(...this.#samples);
  }

  get samples(): number {
    return this.#samples.length;
  }
}
