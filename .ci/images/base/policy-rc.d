#!/bin/sh
# Services are never started while a package is installed during an image build.
exit 101
