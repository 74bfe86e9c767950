//! The sample messages' personal data, and the check that a text holds none of it.

/// R-ANO-8: none of the samples' personal values in `text` (named `what` in the failure).
pub fn assert_no_pii(what: &str, text: &str) {
    for pii in SAMPLE_PII {
        assert!(!text.contains(pii), "R-ANO-8: {pii:?} in {what}: {text}");
    }
}

/// Raw personal values of the shared samples, which must never reach the CEM.
pub const SAMPLE_PII: &[&str] = &[
    // adt_a03_discharge / a01 / a08 / a13: 王秀英
    "王秀英",
    "王^秀英",
    "秀英",
    "P00067890",
    "31010419551212002X",
    "13998765432",
    "13711112222",
    "Z2026111500087",
    "中山北路",
    // adt_a04_outpatient_registration / a11 / a40: 张三明
    "张三明",
    "三明",
    "P00012345",
    "110101199003071233",
    "13812345678",
    "V20261120001",
    "P00054321",
    // escapes, gbk, deceased
    "欧阳",
    "娜娜",
    "P00011111",
    "13512345678",
    "02161234567",
    "V20261120077",
    "李娜",
    "P00022222",
    "320102198807074326",
    "13822223333",
    "V20261120002",
    "刘德华",
    "德华",
    "中山南路",
    "P00099999",
    "440106194801010019",
    "13600000001",
    "Z2026111000123",
    // S0001 / S0002 / A28 / A31 (issue 21): the contact persons and a work phone, which no
    // mapping reads, must not travel either.
    "张伟",
    "李娟",
    "02161234567",
    "中山南路200号",
];
