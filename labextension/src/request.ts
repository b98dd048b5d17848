import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** URL namespace of the kale_py server extension (kale_py/server.py). */
export const API_NAMESPACE = 'kale-py';

/** A diagnostic as kale_py reports it: cells and lines count from 1. */
export interface IDiagnostic {
  severity: 'error' | 'warning' | 'info';
  code: string;
  message: string;
  cell: number | null;
  line: number | null;
  step: string | null;
}

/**
 * An error answer of the server extension: `message`, and for problems
 * kale_py diagnosed in the notebook (HTTP 422) the diagnostics.
 */
export class KalePyRequestError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly diagnostics: IDiagnostic[] = []
  ) {
    super(message);
    this.name = 'KalePyRequestError';
  }
}

/**
 * Call the server extension and decode its answer (JSON, or text with
 * `as: 'text'`). ServerConnection.makeRequest adds the token and the XSRF
 * header, so POSTs work against a token-protected server.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit & { as?: 'json' | 'text' } = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const { as = 'json', ...requestInit } = init;
  const url = URLExt.join(settings.baseUrl, API_NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, requestInit, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text || response.statusText;
    let diagnostics: IDiagnostic[] = [];
    try {
      const body = JSON.parse(text);
      message = body.message ?? message;
      diagnostics = Array.isArray(body.diagnostics) ? body.diagnostics : [];
    } catch {
      // not JSON (a proxy's error page): keep the text
    }
    throw new KalePyRequestError(message, response.status, diagnostics);
  }
  if (as === 'text') {
    return text as unknown as T;
  }
  return (text ? JSON.parse(text) : null) as T;
}
