/**
 * A minimal XML writer for the fake EC2 server. EC2's Query API writes every
 * list as a wrapper element of `<item>` children, so arrays become `<item>`s;
 * objects become child elements in key order; null/undefined are omitted, as EC2
 * omits absent fields.
 *
 * Invariant: all text and attribute content is escaped; element names come
 * from the server's own code, never from a request.
 */

export type XmlNode = string | number | boolean | null | undefined | Date | readonly XmlNode[] | { readonly [name: string]: XmlNode };

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);
}

function content(node: XmlNode): string {
  if (node === null || node === undefined) return '';
  if (node instanceof Date) return node.toISOString();
  if (Array.isArray(node)) return node.map((item: XmlNode) => element('item', item)).join('');
  if (typeof node === 'object') {
    return Object.entries(node as { readonly [name: string]: XmlNode })
      .map(([name, child]) => element(name, child))
      .join('');
  }
  return escapeXml(String(node));
}

export function element(name: string, node: XmlNode): string {
  if (node === null || node === undefined) return '';
  return `<${name}>${content(node)}</${name}>`;
}

export function document(rootName: string, body: XmlNode, xmlns?: string): string {
  const attr = xmlns ? ` xmlns="${escapeXml(xmlns)}"` : '';
  return `<?xml version="1.0" encoding="UTF-8"?>\n<${rootName}${attr}>${content(body)}</${rootName}>`;
}
