//! FireHOL netset parser and an immutable IP prefix table.
