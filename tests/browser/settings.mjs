// The Settings page as a person uses it, in headless Chromium (Debian's), driven by
// playwright-core: log in, read the cluster status, fill the form, build and download a
// package, then remove a node. Run by tests/e2e/browser.rs, which checks the results.
// Environment: BASE_URL, WEB_USER, WEB_PASSWORD, DOWNLOAD_DIR, SCREENSHOT, REMOVE_NODE,
// CHROMIUM (default /usr/bin/chromium). Prints one JSON line with what it saw.
import { chromium } from "playwright-core";
import path from "node:path";

const env = (k, d) => process.env[k] ?? d;
const base = env("BASE_URL");
const result = {};
const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  timeout: 30000,
});
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);

  // A wrong password first: the page says so.
  await page.goto(base + "/settings");
  result.redirected_to_login = page.url().endsWith("/login");
  await page.fill('input[name="username"]', env("WEB_USER"));
  await page.fill('input[name="password"]', "not-the-password");
  await page.click('button[type="submit"]');
  result.bad_login_message = (await page.textContent(".error")).trim();

  await page.fill('input[name="username"]', env("WEB_USER"));
  await page.fill('input[name="password"]', env("WEB_PASSWORD"));
  await Promise.all([page.waitForURL("**/settings"), page.click('button[type="submit"]')]);

  const section = page.locator("#cluster-node-installer");
  await section.scrollIntoViewIfNeeded();
  result.heading = (await section.locator("h2").textContent()).trim();
  result.status = (await page.textContent("#cluster-status")).trim();
  result.backend = (await page.textContent("#backend")).trim();
  result.active_nodes = (await page.textContent("#active-nodes")).trim();
  result.this_node = (await page.textContent("#this-node")).trim();

  await page.fill("#node_name", "server-03");
  await page.fill("#package_name", "FleetServerClusterNode.pkg");
  await page.selectOption("#ethernet", "allow-virtual");
  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });

  const [download] = await Promise.all([
    page.waitForEvent("download", { timeout: 60000 }),
    page.click("#build"),
  ]);
  result.progress_seen = await page.evaluate(() => document.getElementById("build-status").textContent);
  result.download_name = download.suggestedFilename();
  const saved = path.join(env("DOWNLOAD_DIR"), result.download_name);
  await download.saveAs(saved);
  result.download_path = saved;
  await page.waitForFunction(() => document.getElementById("build-status").textContent.startsWith("✅"));
  result.build_status = (await page.textContent("#build-status")).trim();

  // A bad node name: a clear message, no download.
  await page.fill("#node_name", "");
  await page.evaluate(() => { document.getElementById("node_name").removeAttribute("pattern"); });
  await page.fill("#node_name", "Bad_Name");
  await page.click("#build");
  await page.waitForFunction(() => document.getElementById("build-status").textContent.startsWith("❌"));
  result.bad_build_status = (await page.textContent("#build-status")).trim();

  // "Upgrade package": the node-only fields stay out of the request, the download is the
  // upgrade pkg.
  await page.check("#upgrade");
  await page.fill("#package_name", "");
  const [upgrade] = await Promise.all([
    page.waitForEvent("download", { timeout: 60000 }),
    page.click("#build"),
  ]);
  result.upgrade_name = upgrade.suggestedFilename();
  const savedUpgrade = path.join(env("DOWNLOAD_DIR"), result.upgrade_name);
  await upgrade.saveAs(savedUpgrade);
  result.upgrade_path = savedUpgrade;
  await page.waitForFunction(() => document.getElementById("build-status").textContent.startsWith("✅"));
  result.upgrade_status = (await page.textContent("#build-status")).trim();
  await page.uncheck("#upgrade");

  const remove = env("REMOVE_NODE", "");
  if (remove) {
    page.once("dialog", (d) => d.accept());
    await page.click(`button.remove[data-node="${remove}"]`);
    await page.waitForSelector(`tr[data-node="${remove}"]`, { state: "detached" });
    await page.reload();
    result.removed_row_after_reload = await page.locator(`tr[data-node="${remove}"]`).count();
    result.active_nodes_after_remove = (await page.textContent("#active-nodes")).trim();
  }
  await page.screenshot({ path: env("SCREENSHOT").replace(/\.png$/, "-after.png"), fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
