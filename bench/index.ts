/**
 * `npm run bench [name]`: every benchmark; figures are reported against a baseline measured in
 * the same run. `finetune` (~15-20 min: a real MobileNetV2 and the PyTorch baseline) runs only
 * when named: `npm run bench finetune`, or `npm run bench:finetune`.
 */
import { benchFinetune, parseBenchOptions } from './finetune.js';
import { benchPreprocess } from './preprocess.js';
import { benchPrune } from './prune.js';
import { benchRuntime } from './runtime.js';

const only = process.argv[2];
const benches: Record<string, () => Promise<unknown>> = {
  runtime: benchRuntime,
  preprocess: () => benchPreprocess(),
  prune: () => benchPrune(),
  finetune: () => benchFinetune(parseBenchOptions(process.argv.slice(3))),
};
const onlyWhenNamed = new Set(['finetune']);
if (only && !(only in benches)) throw new Error(`no bench '${only}'; there are: ${Object.keys(benches).join(', ')}`);
for (const [name, bench] of Object.entries(benches)) {
  if (only ? only !== name : onlyWhenNamed.has(name)) continue;
  await bench();
}
