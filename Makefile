# Convenience wrappers around meson; scripts/ do the real work.
.PHONY: all check run deps clean
all:
	@[ -f build/build.ninja ] || meson setup build
	ninja -C build
check:
	bash scripts/check.sh
run:
	bash scripts/run.sh
deps:
	bash scripts/install-deps.sh
clean:
	rm -rf build build-asan build-tsan build-fuzz
