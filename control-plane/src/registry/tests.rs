//! Registry tests with a real store live in tests below.
