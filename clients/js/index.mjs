// The ES module entry of @clinic-notify/client. The library itself is one file that is also
// a plain browser script (it cannot hold `export`), so this module runs it for its effect and
// re-exports what it defines on globalThis.
import "./notify-client.js";

export const NotifyClient = globalThis.NotifyClient;
export const compareCursors = NotifyClient.compareCursors;
export default NotifyClient;
