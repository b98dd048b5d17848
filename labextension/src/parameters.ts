/**
 * Pipeline parameter overrides typed in the panel, turned into the JSON values
 * /runs, /compile and /submit take. Types are those /analyse reports for the
 * notebook's `pipeline-parameters` cell: int, float, str, bool, list, dict, None.
 */

export type ParsedValue = { value: unknown } | { error: string };

/** The text field content for a parameter's default value. */
export function formatParameter(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** A typed value from the text the user entered. */
export function parseParameter(type: string, input: string): ParsedValue {
  const t = input.trim();
  switch (type) {
    case 'str':
      return { value: input };
    case 'int':
      return /^[-+]?[0-9]+$/.test(t)
        ? { value: parseInt(t, 10) }
        : { error: 'a whole number' };
    case 'float':
      return t !== '' && Number.isFinite(Number(t))
        ? { value: Number(t) }
        : { error: 'a number' };
    case 'bool': {
      const v = t.toLowerCase();
      if (v === 'true' || v === 'false') {
        return { value: v === 'true' };
      }
      return { error: 'true or false' };
    }
    default: {
      // list, dict, None: JSON
      try {
        return { value: JSON.parse(t) };
      } catch {
        return { error: 'a JSON value' };
      }
    }
  }
}

/**
 * The overrides to send: only parameters whose text differs from the default.
 * Returns the errors by name when any text does not parse.
 */
export function parameterOverrides(
  parameters: readonly { name: string; type: string; default: unknown }[],
  inputs: Readonly<Record<string, string>>
): { params: Record<string, unknown>; errors: Record<string, string> } {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const p of parameters) {
    const input = inputs[p.name];
    if (input === undefined || input === formatParameter(p.default)) {
      continue;
    }
    const parsed = parseParameter(p.type, input);
    if ('error' in parsed) {
      errors[p.name] = `${p.name} must be ${parsed.error}`;
    } else {
      params[p.name] = parsed.value;
    }
  }
  return { params, errors };
}
