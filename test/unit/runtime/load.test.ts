import { describe, expect, it } from 'vitest';
import { loadPipelineText } from '../../../src/runtime/load.js';
import { fakeRegistry } from '../../fixtures/fake-stages.js';

const load = (text: string, overrides: string[] = []) => loadPipelineText(text, 'p.yaml', fakeRegistry, overrides);
const issuesOf = (text: string, overrides: string[] = []) => {
  const result = load(text, overrides);
  if (result.ok) throw new Error('expected issues');
  return result.issues;
};

const good = `name: demo
seed: 7
stages:
  a:
    uses: source
    with: { value: 3 }
  b:
    uses: transform
    needs: [a]
`;

describe('loadPipelineText', () => {
  it('resolves a valid file with defaults applied and stages in dependency order', () => {
    const result = load(good);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.pipeline.stages.map((s) => s.id)).toEqual(['a', 'b']);
    expect(result.pipeline.stages[1].params).toEqual({ factor: 2, sleepMs: 0, fail: false, partial: false, memo: false });
    expect(result.pipeline.seed).toBe(7);
  });

  it('reports a YAML syntax error with line and column', () => {
    const [issue] = issuesOf('name: x\nstages: [a\n  b: 1\n');
    expect(issue.code).toMatch(/^yaml_/);
    expect(issue.line).toBeGreaterThan(0);
    expect(issue.file).toBe('p.yaml');
  });

  it('reports an empty file', () => {
    expect(issuesOf('')[0].code).toBe('empty_file');
    expect(issuesOf('# only a comment\n')[0].code).toBe('empty_file');
  });

  it('reports a list instead of a map', () => {
    const [issue] = issuesOf('- a\n- b\n');
    expect(issue.code).toBe('wrong_type');
    expect(issue.message).toContain('a map');
    expect(issue.line).toBe(1);
  });

  it('reports an unknown top-level key with a did-you-mean and its line', () => {
    const [issue] = issuesOf(good + 'sed: 3\n');
    expect(issue.code).toBe('unknown_key');
    expect(issue.message).toContain("did you mean 'seed'");
    expect(issue.line).toBe(10);
  });

  it('reports an unknown stage kind with a suggestion', () => {
    const [issue] = issuesOf(good.replace('uses: transform', 'uses: transfrom'));
    expect(issue.code).toBe('unknown_stage_kind');
    expect(issue.message).toContain("did you mean 'transform'");
    expect(issue.path).toBe('stages.b.uses');
    expect(issue.line).toBe(8);
  });

  it('reports a wrong param type at the param line', () => {
    const [issue] = issuesOf(good.replace('with: { value: 3 }', 'with:\n      value: "3"'));
    expect(issue.code).toBe('wrong_type');
    expect(issue.path).toBe('stages.a.with.value');
    expect(issue.line).toBe(7);
    expect(issue.message).toContain('a number');
  });

  it('reports an unknown param key with a suggestion', () => {
    const [issue] = issuesOf(good.replace('with: { value: 3 }', 'with: { valeu: 3 }'));
    expect(issue.code).toBe('unknown_key');
    expect(issue.path).toBe('stages.a.with.valeu');
    expect(issue.message).toContain("did you mean 'value'");
  });

  it('reports needs naming a missing stage', () => {
    const [issue] = issuesOf(good.replace('needs: [a]', 'needs: [aa]'));
    expect(issue.code).toBe('unknown_need');
    expect(issue.message).toContain("did you mean 'a'");
    expect(issue.line).toBe(9);
  });

  it('reports a cycle and prints it', () => {
    const text = `name: c\nstages:\n  a: { uses: transform, needs: [c] }\n  b: { uses: transform, needs: [a] }\n  c: { uses: transform, needs: [b] }\n`;
    const issues = issuesOf(text);
    expect(issues.map((i) => i.code)).toContain('cycle');
    expect(issues.find((i) => i.code === 'cycle')!.message).toMatch(/a -> c -> b -> a|a -> b -> c -> a|c -> b -> a -> c/);
  });

  it.each(['../../x', '__proto__', 'Upper', '1abc'])('refuses the stage id %s', (id) => {
    const issues = issuesOf(`name: x\nstages:\n  ${JSON.stringify(id)}: { uses: source }\n`);
    expect(issues[0].code).toBe('bad_name');
    expect(issues[0].line).toBe(3);
  });

  it('refuses a billion-laughs alias bomb quickly', () => {
    const bomb = [
      'name: x',
      'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
      'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]',
      'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]',
      'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]',
      'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]',
      'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]',
      'stages: { s: { uses: source, with: { path: *f } } }',
    ].join('\n');
    const t0 = performance.now();
    const issues = issuesOf(bomb);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(issues[0].code).toBe('yaml_alias_bomb');
  });

  it('refuses duplicate keys', () => {
    expect(issuesOf(good + 'seed: 8\n')[0].code).toBe('yaml_duplicate_key');
  });

  it('reports every problem at once', () => {
    const text = good.replace('with: { value: 3 }', 'with: { value: x, extra: 1 }').replace('needs: [a]', 'needs: [zz]');
    expect(issuesOf(text).length).toBeGreaterThanOrEqual(3);
  });

  it('applies --set overrides and validates them', () => {
    const result = load(good, ['stages.b.with.factor=5']);
    expect(result.ok && result.pipeline.stages[1].params.factor).toBe(5);
    const [issue] = issuesOf(good, ['stages.b.with.factor=five']);
    expect(issue.code).toBe('wrong_type');
    expect(issuesOf(good, ['nonsense'])[0].code).toBe('bad_set');
  });

  it('reports top-level and stage problems together', () => {
    const issues = issuesOf(good.replace('seed: 7', 'seed: -1').replace('with: { value: 3 }', 'with: { valeu: 3 }').replace('needs: [a]', 'needs: [zz]'));
    expect(issues.map((i) => i.code).sort()).toEqual(['out_of_range', 'unknown_key', 'unknown_need']);
  });

  it('supports YAML merge keys', () => {
    const ok = load(`name: m\nstages:\n  a: { uses: source, with: &d { value: 4 } }\n  b: { uses: source, with: { <<: *d } }\n`);
    expect(ok.ok && ok.pipeline.stages[1].params.value).toBe(4);
  });

  it('--set on a stage that does not exist names the closest one', () => {
    const [issue] = issuesOf(good, ['stages.bb.with.factor=3']);
    expect(issue).toMatchObject({ code: 'bad_set', file: '--set' });
    expect(issue.message).toContain("did you mean 'b'");
  });

  it('says a oneOf mistake once, listing the alternatives', () => {
    const issues = loadPipelineText('name: x\nstages:\n  a: { uses: alt, with: { until: 1.5 } }\n', 'p.yaml', { alt: { ...fakeRegistry.source, kind: 'alt', paramsSchema: { type: 'object', additionalProperties: false, properties: { until: { oneOf: [{ type: 'string' }, { type: 'integer' }] } } } } });
    expect(issues.ok).toBe(false);
    if (issues.ok) return;
    expect(issues.issues).toHaveLength(1);
    expect(issues.issues[0].message).toContain('a string, or a whole number');
  });

  it('refuses a binary file and several YAML documents', () => {
    expect(issuesOf('name: x\u0000\u0001\u0002')[0].code).toBe('binary_file');
    expect(issuesOf('name: x\nstages: {}\n---\nname: y\n')[0].message).toContain('several YAML documents');
  });

  it('requires a provider of every consumed artifact type', () => {
    const [issue] = issuesOf('name: x\nstages:\n  b: { uses: transform }\n');
    expect(issue.code).toBe('missing_input');
    expect(issue.message).toContain("'source'");
  });
});

describe('--set problems belong to the command line', () => {
  it('an unknown key or a bad value given by --set names the --set, not a line of the file', () => {
    const [unknown] = issuesOf(good, ['stages.b.with.facter=3']);
    expect(unknown).toMatchObject({ code: 'unknown_key', file: '--set' });
    expect(unknown.line).toBeUndefined();
    expect(unknown.message).toMatch(/^--set stages\.b\.with\.facter=3: unknown key 'facter'/);
    const [wrong] = issuesOf(good, ['stages.a.with.value=abc']);
    expect(wrong).toMatchObject({ code: 'wrong_type', file: '--set', path: 'stages.a.with.value' });
    expect(wrong.snippet).toBeUndefined();
    expect(wrong.message).toContain('--set stages.a.with.value=abc: ');
  });

  it('a problem of the file itself keeps its line when an unrelated --set is given', () => {
    const [issue] = issuesOf(good.replace('with: { value: 3 }', 'with: { valeu: 3 }'), ['stages.b.with.factor=5']);
    expect(issue).toMatchObject({ code: 'unknown_key', file: 'p.yaml', line: 6 });
  });
});
