/**
 * Params have one source of truth: the stage's JSON schema. Each stage's TS params interface
 * (read from its source, as docs.test.ts reads the schemas) must list exactly the schema's keys,
 * be optional exactly where the schema neither requires a key nor gives it a default (the runtime
 * applies defaults before `run`), and document only the schema's default.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { stages } from '../../src/stages/index.js';

const root = path.resolve(import.meta.dirname, '../..');
type Field = { name: string; optional: boolean; doc: string; inherited: boolean };
type Schema = { properties?: Record<string, { default?: unknown }>; required?: string[] };

/** The fields of `export interface <name>` in `file`, with those of the interface it extends. */
function interfaceFields(file: string, name: string): Field[] {
  const text = readFileSync(path.join(root, file), 'utf8');
  const match = new RegExp(`export interface ${name}(?: extends (\\w+))? \\{\\n([\\s\\S]*?)\\n\\}`).exec(text);
  if (!match) throw new Error(`no interface ${name} in ${file}`);
  const fields = [...match[2].matchAll(/(?:^  (\/\*\*[\s\S]*?\*\/)\n)?^  (\w+)(\??):/gm)].map(([, doc = '', field, optional]) => ({ name: field, optional: optional === '?', doc, inherited: false }));
  if (match[1]) {
    const imported = new RegExp(`import [^;]*\\b${match[1]}\\b[^;]*from '([^']+)'`).exec(text);
    const parent = imported ? path.join(path.dirname(file), imported[1].replace(/\.js$/, '.ts')) : file;
    fields.push(...interfaceFields(parent, match[1]).map((field) => ({ ...field, inherited: true })));
  }
  return fields;
}

/** The value after "Default" in a JSDoc, when it is a literal (`32`, `` `val` ``, `` `['tfjs']` ``, `false`). */
function documentedDefault(doc: string): { value: unknown } | undefined {
  const match = /Default:? (`[^`]+`|\[[^\]]*\]|\{[^}]*\}|[^\s.,:;()]+(?:\.\d+)?)/.exec(doc.replace(/\s*\n\s*\*\s*/g, ' '));
  if (!match) return undefined;
  const raw = match[1].replace(/^`|`$/g, '');
  for (const attempt of [raw, raw.replace(/'/g, '"').replace(/([{,]\s*)(\w+):/g, '$1"$2":')]) {
    try {
      return { value: JSON.parse(attempt) };
    } catch {
      // not JSON; try the next spelling, then take it as a bare word
    }
  }
  return { value: raw };
}

describe.each(Object.values(stages).map((definition) => [definition.kind, definition] as const))('%s params', (kind, definition) => {
  const file = `src/stages/${kind}.ts`;
  const name = new RegExp(`StageDefinition<(\\w+)>`).exec(readFileSync(path.join(root, file), 'utf8'))![1];
  const fields = interfaceFields(file, name);
  const schema = definition.paramsSchema as Schema;
  const properties = schema.properties ?? {};

  it('the interface has exactly the schema keys', () => {
    expect(fields.map((f) => f.name).sort()).toEqual(Object.keys(properties).sort());
  });

  it('a key is optional exactly when the schema neither requires it nor defaults it', () => {
    for (const field of fields) {
      const property = properties[field.name];
      if (!property) continue;
      const filled = property.default !== undefined || (schema.required ?? []).includes(field.name);
      expect(field.optional, `${name}.${field.name}`).toBe(!filled);
    }
  });

  it('a documented default is the schema default', () => {
    const problems: string[] = [];
    for (const field of fields) {
      const schemaDefault = properties[field.name]?.default;
      const documented = documentedDefault(field.doc);
      if (schemaDefault === undefined) {
        // Prose ("Default: the whole model") may describe what an absent key means; a literal may not.
        if (documented && typeof documented.value !== 'string') problems.push(`${field.name} documents default ${JSON.stringify(documented.value)}, the schema has none`);
      } else if (field.inherited && /Default: per stage/.test(field.doc)) {
        // A field shared by several stages' interfaces whose schemas differ; each schema says.
      } else if (!documented) {
        problems.push(`${field.name} does not document its schema default ${JSON.stringify(schemaDefault)}`);
      } else if (JSON.stringify(documented.value) !== JSON.stringify(schemaDefault)) {
        problems.push(`${field.name} documents default ${JSON.stringify(documented.value)}, the schema says ${JSON.stringify(schemaDefault)}`);
      }
    }
    expect(problems, name).toEqual([]);
  });
});
