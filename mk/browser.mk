# Browser tests (tests/playground): Debian's chromium + chromium-driver, driven by selenium (the `browser`
# extra that `make setup` installs). apt-get runs only when either binary is missing, so `make test` pays
# nothing once they are installed; without root or a package mirror the playground tests skip and say why.

.PHONY: browser

browser: ## install chromium + chromium-driver (apt-get, only when missing) for the playground's browser tests
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; } || echo "browser: chromium not installed: tests/playground will skip"

test: browser
