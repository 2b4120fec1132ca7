-- Order lines keep the terms they were sold with (`OrderLine::terms`, and `OrderLine::pack`
-- for the components of a benefit pack, which replaces `bundle`). Orders stored before this
-- version get their terms from the goods as they are now: that work needs the domain's rules
-- (`quanyi_order::complete_terms`), so it runs in Rust right after this file, in the same
-- transaction (`migrate::complete_line_terms`), and also rewrites `line_skus` and
-- `line_qtys`, which now count each pack's packs beside its components' units.
SELECT 1;
