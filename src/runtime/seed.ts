/** Per-stage seeds. */
import { sha256 } from './hash.js';

/** A 32-bit seed from the pipeline seed and the stage id: stable across runs and machines. */
export function seedFor(seed: number, stageId: string): number {
  return parseInt(sha256(`${seed}:${stageId}`).slice(0, 8), 16);
}
