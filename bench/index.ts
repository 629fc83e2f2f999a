/** `npm run bench`: every benchmark, figures printed as ratios against a baseline measured in the same run. */
import { benchRuntime } from './runtime.js';

const only = process.argv[2];
const benches: Record<string, () => Promise<void>> = {
  runtime: benchRuntime,
};
for (const [name, bench] of Object.entries(benches)) {
  if (only && only !== name) continue;
  await bench();
}
